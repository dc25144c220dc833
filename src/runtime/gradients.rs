//! Backward models for the loaded models: built once per (model, layers, rule set) with the
//! autodiff builder, shared by every worker (each worker makes its own session from the bytes), and
//! described for `inspect` and the API (differentiable or not, which operators block it, candidate
//! layers for CAM methods).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use prost::Message;
use serde::Serialize;
use utoipa::ToSchema;

use super::graph_runner::OrtRunner;
use super::manifest::{Layout, ModelSpec};
use super::shapes::probe_shapes_with;
use super::LoadedModel;
use crate::onnx::autodiff::rules::InputBounds;
use crate::onnx::autodiff::{self, analysis_layers, GradientSpec, RuleSet, RuleTable, ShapeMap};
use crate::onnx::dropout::{self, MaskSite};
use crate::onnx::proto::{self, ModelProto};

/// Which backward model: the model, the intermediate layers it exposes, the rule set, and whether
/// it goes on to the input's gradient.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GradientKey {
    /// Model name.
    pub model: String,
    /// Intermediate tensors exposed with their gradients.
    pub layers: Vec<String>,
    /// Rule table.
    pub rules: RuleSet,
    /// Whether the graph gives the input's gradient; without it the backward pass stops at the
    /// layers (the CAM methods' graph).
    pub input_grad: bool,
}

/// A built backward model, ready for a session.
#[derive(Debug)]
pub struct BuiltGradient {
    /// Serialized model (dropped once its session exists).
    pub bytes: Vec<u8>,
    /// What it outputs.
    pub outputs: GradientOutputs,
}

/// The output names of a backward model.
#[derive(Debug, Clone)]
pub struct GradientOutputs {
    /// Input gradient output name (empty when the key did not ask for it).
    pub input_grad: String,
    /// (activation, gradient) output names per requested layer.
    pub layers: Vec<(String, String)>,
    /// Opset of the built model.
    pub opset: i64,
    /// The output naming each row's top class, when rows fed all-zero weights are weighted by it
    /// (models whose output is `[batch, classes]`; a `yolo` detector's: the position of its
    /// highest class score in the flattened row).
    pub target_index: Option<String>,
}

/// What explaind can do with a model's gradients.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct GradientReport {
    /// True when every operator between the input and the scores has a gradient rule.
    pub differentiable: bool,
    /// Operators that block gradients, as `domain::op (opset N) at node, ...`.
    pub blocking_operators: Vec<String>,
    /// 4-D activations with a spatial size above 1 between input and scores, in graph order.
    pub cam_layers: Vec<String>,
    /// The layer CAM methods use by default: the last of `cam_layers`.
    pub default_cam_layer: Option<String>,
    /// The channel axis of each CAM layer: 1 for channels-first (NCHW) feature maps, 3 for
    /// channels-last (NHWC) ones, as converted TensorFlow and Caffe graphs hold between their
    /// transposes. CAM methods pool over this axis.
    pub cam_layer_channel_axis: std::collections::BTreeMap<String, usize>,
    /// The CAM layers that are a vision transformer's token sequence (channel axis 2): how their
    /// tokens lie on the image. The default CAM layer of a ViT is the sequence its last attention
    /// reads, its patch tokens laid out as a feature map (the class token left out).
    pub cam_layer_tokens: std::collections::BTreeMap<String, crate::onnx::autodiff::TokenGrid>,
    /// Self-attention probabilities (Softmax outputs `[batch, heads, tokens, tokens]`) between
    /// input and scores, in graph order: what attention rollout multiplies.
    pub attention_maps: Vec<String>,
    /// What each family of gradient rules refuses in this model (empty: it serves the model),
    /// from a dry run of each family's build: `standard` (exact gradients: saliency, Integrated
    /// Gradients, SmoothGrad, the CAM methods), `guided-backprop`, `deconvnet`, `deeplift-rescale`
    /// (DeepLIFT, DeepLiftShap) and `lrp/<composite>`. A method whose rules refuse the model is
    /// refused with these reasons before any work.
    pub refusals_by_rules: std::collections::BTreeMap<String, Vec<String>>,
    /// True when the graph fixes its batch at one row (a Reshape or Resize to batch 1, as some
    /// converters write): explaind runs it one row per pass, and refuses methods whose rows must
    /// share a pass (DeepLIFT's input and reference).
    pub one_row_per_pass: bool,
    /// Size of each CAM layer, from the probed shapes (Score-CAM runs one row per channel, and a
    /// CAM's memory is the layer's values: both checked at the edge).
    #[serde(skip)]
    #[schema(ignore)]
    pub layer_sizes: std::collections::BTreeMap<String, LayerSize>,
}

/// A CAM layer's size per input row.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LayerSize {
    /// Channels (feature maps).
    pub channels: usize,
    /// Values in all (channels x height x width), when every axis was probed.
    pub values: Option<usize>,
}

/// Builds backward models (the sessions that run them keep them; this keeps only the prepared
/// forward models they are built from).
pub struct GradientCache {
    env: &'static ort::environment::Environment,
    builds: AtomicUsize,
    prepared: Mutex<HashMap<String, Arc<(ModelProto, ShapeMap)>>>,
    /// Fitted patterns (PatternNet, PatternAttribution), kept here and on disk.
    patterns: super::patterns::PatternStore,
}

impl GradientCache {
    /// An empty cache.
    pub fn new(env: &'static ort::environment::Environment) -> Self {
        Self {
            env,
            builds: AtomicUsize::new(0),
            prepared: Mutex::new(HashMap::new()),
            patterns: super::patterns::PatternStore::default(),
        }
    }

    /// The same cache keeping fitted patterns under `dir` too (`data_dir/patterns`), where a
    /// restart finds them.
    pub fn with_pattern_dir(mut self, dir: std::path::PathBuf) -> Self {
        self.patterns = super::patterns::PatternStore::new(Some(dir));
        self
    }

    /// The fitted patterns (PatternNet, PatternAttribution).
    pub fn patterns(&self) -> &super::patterns::PatternStore {
        &self.patterns
    }

    /// Backward models built so far.
    pub fn built_count(&self) -> usize {
        self.builds.load(Ordering::SeqCst)
    }

    /// How many weighted layers (Conv, Gemm, MatMul with weights) the model has: what the
    /// randomisation check can randomise; 0 when the model cannot be prepared.
    pub fn weighted_layer_count(&self, model: &LoadedModel) -> usize {
        self.prepared(model)
            .map(|p| crate::onnx::randomize::weighted_layers(&p.0).len())
            .unwrap_or(0)
    }

    /// The model prepared for differentiation and its probed shapes (computed once per model).
    pub fn prepared(&self, model: &LoadedModel) -> Result<Arc<(ModelProto, ShapeMap)>, String> {
        if let Some(p) = self.prepared.lock().unwrap_or_else(|p| p.into_inner()).get(&model.name) {
            return Ok(p.clone());
        }
        // Kept for as long as the model serves: its weights stay slices of the model's bytes.
        let decoded = proto::decode_model_shared(&model.bytes).map_err(|e| e.to_string())?;
        let prepared = autodiff::prepare_forward(&decoded).map_err(|e| e.to_string())?;
        let runner = OrtRunner::new(self.env);
        let shapes = probe_shapes_with(
            &runner,
            &prepared,
            &model.spec.input,
            &sample_dims(&model.spec),
            &model.spec.constants,
        )?;
        let entry = Arc::new((prepared, shapes));
        self.prepared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(model.name.clone(), entry.clone());
        Ok(entry)
    }

    /// The probed dimensions of the float tensor `name` of `model`'s graph (`None`: no such
    /// float tensor); an error when the graph cannot be prepared.
    pub fn float_tensor_dims(&self, model: &LoadedModel, name: &str) -> Result<Option<Vec<Option<i64>>>, String> {
        let prepared = self.prepared(model)?;
        Ok(prepared
            .1
            .get(name)
            .filter(|s| s.elem_type == proto::data_type::FLOAT)
            .map(|s| s.dims.clone()))
    }

    /// True when `model`'s graph fixes its batch at one row ([`super::shapes::fixes_batch`]).
    pub fn fixes_batch(&self, model: &LoadedModel) -> bool {
        self.prepared(model)
            .is_ok_and(|p| super::shapes::fixes_batch(&p.1, &model.spec.input, &model.spec.output))
    }

    /// Forgets `name`'s prepared graph (a model lent for one job).
    pub fn forget(&self, name: &str) {
        self.prepared.lock().unwrap_or_else(|p| p.into_inner()).remove(name);
    }

    /// Builds the backward model for `key`.
    pub fn build(&self, model: &LoadedModel, key: &GradientKey) -> Result<BuiltGradient, String> {
        let prepared = self.prepared(model)?;
        self.build_from(model, key, &prepared.0, &prepared.1, None)
    }

    /// Builds the backward model for `key` whose target is `sum(seed * weights)`, `seed` an
    /// intermediate tensor of the model (a layer) rather than its output; the model's output is
    /// still computed and answered.
    pub fn build_seeded(&self, model: &LoadedModel, key: &GradientKey, seed: &str) -> Result<BuiltGradient, String> {
        let prepared = self.prepared(model)?;
        self.build_from(model, key, &prepared.0, &prepared.1, Some(seed))
    }

    /// Builds the backward model of `model` with dropout masks at `sites` (mask inputs beside the
    /// input and the target weights; no gradients flow to the masks).
    pub fn build_masked(
        &self,
        model: &LoadedModel,
        key: &GradientKey,
        sites: &[MaskSite],
    ) -> Result<BuiltGradient, String> {
        let prepared = self.prepared(model)?;
        let masked = dropout::with_masks(&prepared.0, sites)?;
        let mut shapes = prepared.1.clone();
        for (k, site) in sites.iter().enumerate() {
            let shape = shapes
                .get(&site.tensor)
                .cloned()
                .ok_or_else(|| format!("no shape for `{}`", site.tensor))?;
            shapes.insert(dropout::mask_input(k), shape.clone());
            shapes.insert(dropout::masked_tensor(site, k), shape);
        }
        self.build_from(model, key, &masked, &shapes, None)
    }

    fn build_from(
        &self,
        model: &LoadedModel,
        key: &GradientKey,
        forward: &ModelProto,
        shapes: &ShapeMap,
        seed: Option<&str>,
    ) -> Result<BuiltGradient, String> {
        self.builds.fetch_add(1, Ordering::SeqCst);
        let started = std::time::Instant::now();
        let spec = GradientSpec {
            input: model.spec.input.clone(),
            output: seed.unwrap_or(&model.spec.output).to_string(),
            layers: key.layers.clone(),
            input_grad: key.input_grad,
        };
        let runner = OrtRunner::new(self.env);
        let patterns = match key.rules {
            RuleSet::Pattern(r) => Some(
                self.patterns
                    .by_digest(&model.sha256, r.digest)
                    .ok_or("the patterns this backward model needs are no longer kept")?,
            ),
            _ => None,
        };
        let table = RuleTable::for_set(key.rules)
            .with_input_bounds(input_bounds(&model.spec))
            .with_patterns(patterns);
        // A refused build names every refused node, not just the first the build met.
        let mut built = autodiff::build_backward(forward, &spec, shapes, &table, Some(&runner)).map_err(|e| {
            let all = autodiff::refusals(forward, &spec, shapes, &table, Some(&runner));
            if all.len() > 1 {
                all.join("; ")
            } else {
                e.to_string()
            }
        })?;
        // Rows fed no weights explain their top class, chosen in the graph: one pass, no forward
        // pass first. Only a `[batch, classes]` output can be ranked.
        let classes = shapes
            .get(&model.spec.output)
            .filter(|s| s.dims.len() == 2 && seed.is_none())
            .and_then(|s| s.dims[1]);
        // A `yolo` detector's best detection is its highest class score (Ultralytics' `max_det`
        // sort and NMS keep it first), which the graph can find too.
        let best = match (&model.spec.detection, seed) {
            (Some(d), None) => shapes
                .get(&model.spec.output)
                .and_then(|s| match s.dims.as_slice() {
                    [_, Some(a), Some(b)] => Some([usize::try_from(*a).ok()?, usize::try_from(*b).ok()?]),
                    _ => None,
                })
                .zip(super::detect::score_positions(d, model.spec.labels.len())),
            _ => None,
        };
        let seeded = match (classes, best, &model.spec.detection) {
            (Some(c), _, None) => Some(autodiff::seed_with_top_prediction(
                &mut built,
                &model.spec.output,
                c as usize,
            )),
            (_, Some((row, scores)), Some(_)) => Some(autodiff::seed_with_best_candidate(
                &mut built,
                &model.spec.output,
                row,
                &scores,
            )),
            _ => None,
        };
        let target_index = match seeded {
            Some(Ok(())) => Some(autodiff::TARGET_INDEX_OUTPUT.to_string()),
            Some(Err(e)) => {
                tracing::info!(model = %model.name, reason = %e, "the backward model cannot choose its own target");
                None
            }
            None => None,
        };
        tracing::info!(model = %model.name, layers = ?key.layers, rules = ?key.rules, opset = built.opset,
            ms = started.elapsed().as_millis() as u64, "backward model built");
        Ok(BuiltGradient {
            bytes: built.model.encode_to_vec(),
            outputs: GradientOutputs {
                input_grad: built.input_grad,
                layers: built.layers,
                opset: built.opset,
                target_index,
            },
        })
    }

    /// The model with dropout masks as inputs at `sites` (found by [`Self::mask_sites`]).
    pub fn masked(&self, model: &LoadedModel, sites: &[MaskSite]) -> Result<Vec<u8>, String> {
        let prepared = self.prepared(model)?;
        let masked = dropout::with_masks(&prepared.0, sites)?;
        tracing::info!(model = %model.name, sites = ?sites.iter().map(|s| &s.tensor).collect::<Vec<_>>(), "model with dropout masks built");
        Ok(masked.encode_to_vec())
    }

    /// The classifier head of `model`: the embedding a reference set keeps and the last linear
    /// layer influence weighs ([`crate::onnx::head`]).
    pub fn head(&self, model: &LoadedModel, embedding_layer: Option<&str>) -> Result<crate::onnx::head::Head, String> {
        let prepared = self
            .prepared(model)
            .map_err(|e| format!("the model's graph cannot be read: {e}"))?;
        let graph = prepared.0.graph.as_ref().ok_or("the model has no graph")?;
        crate::onnx::head::find(graph, &prepared.1, &model.spec.output, embedding_layer)
    }

    /// The model with `names` as further outputs.
    pub fn with_outputs(&self, model: &LoadedModel, names: &[String]) -> Result<Vec<u8>, String> {
        let prepared = self.prepared(model)?;
        Ok(crate::onnx::head::with_outputs(&prepared.0, names)?.encode_to_vec())
    }

    /// The model with its pattern statistics as outputs ([`crate::onnx::patterns::statistics_graph`],
    /// for the linear layers [`crate::onnx::patterns::linear_layers`] finds in it).
    pub fn statistics(&self, model: &LoadedModel) -> Result<Vec<u8>, String> {
        let prepared = self.prepared(model)?;
        let graph = prepared.0.graph.as_ref().ok_or("the model has no graph")?;
        let layers = crate::onnx::patterns::linear_layers(graph, &model.spec.input, &model.spec.output, &prepared.1)?;
        let started = std::time::Instant::now();
        let built = crate::onnx::patterns::statistics_graph(&prepared.0, &layers, &prepared.1)?;
        tracing::info!(model = %model.name, layers = layers.len(), ms = started.elapsed().as_millis() as u64,
            "pattern statistics model built");
        Ok(built.encode_to_vec())
    }

    /// The model cut down to computing `names`, its only outputs ([`crate::onnx::head::to_outputs`]).
    pub fn to_outputs(&self, model: &LoadedModel, names: &[String]) -> Result<Vec<u8>, String> {
        let prepared = self.prepared(model)?;
        Ok(crate::onnx::head::to_outputs(&prepared.0, names)?.encode_to_vec())
    }

    /// Where MC dropout puts its masks in `model`: the tensors in `layers`, else the model's own
    /// Dropout nodes, else the input of its last linear layer; an error says why none can go there.
    pub fn mask_sites(&self, model: &LoadedModel, layers: &[String]) -> Result<Vec<MaskSite>, String> {
        let prepared = self
            .prepared(model)
            .map_err(|e| format!("the model's graph cannot be read for masks: {e}"))?;
        dropout::mask_sites(&prepared.0, &prepared.1, &model.spec.input, &model.spec.output, layers)
    }

    /// Bytes one input row holds in a backward pass, estimated from the probed forward: every float
    /// activation, kept for the backward pass, plus about twice that in gradients and masks.
    /// Activations are the tensors whose shape follows the batch (the probe marks that axis
    /// dynamic; per row it is 1); weights and constants are held once, whatever the rows, and are
    /// not counted. `None` when the model's shapes are unknown. Computed once per model, at start,
    /// by the session store.
    pub fn row_bytes(&self, model: &LoadedModel) -> Option<u64> {
        let prepared = self.prepared(model).ok()?;
        Some(activation_floats(&prepared.1).saturating_mul(4 * 3).max(1))
    }

    /// Describes what gradients the model supports.
    pub fn report(&self, model: &LoadedModel) -> GradientReport {
        if let Some(why) = model.spec.gradients_refused() {
            return GradientReport::refused(why);
        }
        match self.prepared(model) {
            Ok(p) => describe(
                &p.0,
                &p.1,
                (&model.spec.input, &model.spec.output),
                input_bounds(&model.spec),
                Some(&OrtRunner::new(self.env)),
            ),
            Err(e) => GradientReport::refused(e),
        }
    }
}

impl GradientReport {
    /// The report of a model no gradient build can start on, for `reason`.
    pub fn refused(reason: String) -> Self {
        GradientReport {
            differentiable: false,
            blocking_operators: vec![reason.clone()],
            cam_layers: vec![],
            default_cam_layer: None,
            cam_layer_channel_axis: Default::default(),
            cam_layer_tokens: Default::default(),
            attention_maps: Vec::new(),
            refusals_by_rules: RuleSet::families()
                .iter()
                .map(|f| (family(f), vec![reason.clone()]))
                .collect(),
            one_row_per_pass: false,
            layer_sizes: Default::default(),
        }
    }

    /// Why the rules of `set` cannot explain the model (empty: they can).
    pub fn refusals(&self, set: &RuleSet) -> &[String] {
        self.refusals_by_rules
            .get(&family(set))
            .map(Vec::as_slice)
            .unwrap_or_default()
    }
}

/// A rule set's family: its key in [`GradientReport::refusals_by_rules`] (`standard`,
/// `guided-backprop`, `deconvnet`, `deeplift-rescale`, `lrp/<composite>`), named after the methods
/// that ask for it, the report's vocabulary; the `onnx` layer names rule sets by what they do.
pub fn family(set: &RuleSet) -> String {
    match set {
        RuleSet::Exact => "standard".into(),
        RuleSet::ReluMaskedByInputAndGradient => "guided-backprop".into(),
        RuleSet::ReluMaskedByGradient => "deconvnet".into(),
        RuleSet::Rescale => "deeplift-rescale".into(),
        RuleSet::Relevance(rules) => format!("lrp/{}", rules.composite.name()),
        RuleSet::Pattern(r) if r.attribution => "pattern-attribution".into(),
        RuleSet::Pattern(_) => "pattern-net".into(),
    }
}

/// The lowest and highest value each input channel of an image model can take after its
/// normalisation (pixels 0 and 255), for LRP's ZBox rule. `None` for tabular models.
pub fn input_bounds(spec: &ModelSpec) -> Option<InputBounds> {
    let image = spec.image.as_ref()?;
    let bound = |pixel: f32| -> Vec<f32> {
        (0..image.channels)
            .map(|c| {
                let (mean, std) = (
                    image.mean.get(c).copied().unwrap_or(0.0),
                    image.std.get(c).copied().unwrap_or(1.0),
                );
                (pixel * image.scale - mean) / std
            })
            .collect()
    };
    let (a, b) = (bound(0.0), bound(255.0));
    // A negative std swaps the ends.
    let low = a.iter().zip(&b).map(|(a, b)| a.min(*b)).collect();
    let high = a.iter().zip(&b).map(|(a, b)| a.max(*b)).collect();
    Some(InputBounds { low, high })
}

/// Float values one input row puts in the activations of a probed graph: the tensors with a
/// dynamic (batch) axis, that axis counted once.
fn activation_floats(shapes: &ShapeMap) -> u64 {
    shapes
        .values()
        .filter(|t| t.elem_type == crate::onnx::proto::data_type::FLOAT && t.dims.iter().any(Option::is_none))
        .map(|t| {
            t.dims
                .iter()
                .fold(1u64, |n, d| n.saturating_mul(d.map_or(1, |d| d.max(0) as u64)))
        })
        .fold(0u64, u64::saturating_add)
}

/// Describes the gradients of a prepared model whose shapes were probed. Whether it is
/// differentiable comes from a dry run of the same build a request makes (every rule, every
/// attribute), so the report and the request path cannot disagree.
pub fn describe(
    prepared: &ModelProto,
    shapes: &ShapeMap,
    (input, output): (&str, &str),
    bounds: Option<InputBounds>,
    runner: Option<&dyn autodiff::GraphRunner>,
) -> GradientReport {
    let spec = GradientSpec {
        input: input.to_string(),
        output: output.to_string(),
        layers: vec![],
        input_grad: true,
    };
    let refusals_by_rules: std::collections::BTreeMap<String, Vec<String>> = RuleSet::families()
        .into_iter()
        .map(|set| {
            let table = RuleTable::for_set(set).with_input_bounds(bounds.clone());
            (
                family(&set),
                autodiff::refusals(prepared, &spec, shapes, &table, runner),
            )
        })
        .collect();
    let blocking = refusals_by_rules
        .get(&family(&RuleSet::Exact))
        .cloned()
        .unwrap_or_default();
    let layers = analysis_layers(prepared, input, output, shapes);
    let layer_sizes = layers
        .iter()
        .filter_map(|l| {
            let dims = &shapes.get(&l.name)?.dims;
            let channels = usize::try_from(dims.get(l.channel_axis).copied().flatten()?).ok()?;
            let values = dims
                .iter()
                .skip(1)
                .try_fold(1usize, |n, d| n.checked_mul(usize::try_from((*d)?).ok()?));
            Some((l.name.clone(), LayerSize { channels, values }))
        })
        .collect();
    let cam_layer_channel_axis = layers.iter().map(|l| (l.name.clone(), l.channel_axis)).collect();
    let cam_layer_tokens: std::collections::BTreeMap<String, crate::onnx::autodiff::TokenGrid> =
        layers.iter().filter_map(|l| Some((l.name.clone(), l.grid?))).collect();
    let cam_layers: Vec<String> = layers.into_iter().map(|l| l.name).collect();
    // A transformer's token layer is read through its patch grid whatever bypasses it.
    let shared = |l: &str| cam_layer_tokens.contains_key(l) || autodiff::on_every_path(prepared, input, output, l);
    let default_cam_layer = default_cam_layer(&cam_layers, &layer_sizes, output, &shared);
    GradientReport {
        layer_sizes,
        differentiable: blocking.is_empty(),
        blocking_operators: blocking,
        default_cam_layer,
        cam_layers,
        cam_layer_channel_axis,
        cam_layer_tokens,
        attention_maps: autodiff::attention_maps(prepared, input, output, shapes),
        refusals_by_rules,
        one_row_per_pass: super::shapes::fixes_batch(shapes, input, output),
    }
}

/// The layer CAM methods use by default: the last CAM layer that every path from the input to the
/// output runs through (`shared`; a multi-scale detector's last layers belong to one head each,
/// and a CAM there is blank for the other heads' detections), else the last; and for a per-pixel
/// output (a segmenter's) the last such with more channels than the output has classes: the
/// layers after it only turn features into class scores, and a CAM of the scores would show the
/// prediction itself, not what it was read from (Seg-Grad-CAM reads a feature layer).
fn default_cam_layer(
    cam_layers: &[String],
    sizes: &std::collections::BTreeMap<String, LayerSize>,
    output: &str,
    shared: &dyn Fn(&str) -> bool,
) -> Option<String> {
    let last = cam_layers
        .iter()
        .rev()
        .find(|l| shared(l))
        .or(cam_layers.last())
        .cloned();
    let Some(classes) = sizes.get(output).map(|s| s.channels) else {
        return last;
    };
    cam_layers
        .iter()
        .rev()
        .find(|l| sizes.get(*l).is_some_and(|s| s.channels > classes) && shared(l))
        .cloned()
        .or(last)
}

/// A batch-of-one input shape for the probe.
pub fn sample_dims(spec: &ModelSpec) -> Vec<usize> {
    match (&spec.image, &spec.tabular) {
        (Some(img), _) => match img.layout {
            Layout::NCHW => vec![1, img.channels, img.height, img.width],
            Layout::NHWC => vec![1, img.height, img.width, img.channels],
        },
        (None, Some(tab)) => vec![1, tab.features.len()],
        // The longest text: the probe's sizes bound every pass's memory.
        (None, None) => match &spec.text {
            Some(t) => vec![1, t.max_length, t.embedding_size],
            None => vec![1],
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::autodiff::TensorShape;
    use crate::onnx::proto::data_type;

    /// A row's activations are the float tensors that follow the batch; weights (all axes known)
    /// and integer tensors are not counted.
    #[test]
    fn activations_per_row_leave_out_weights_and_integers() {
        let shape = |dims: &[Option<i64>], elem_type| TensorShape {
            dims: dims.to_vec(),
            elem_type,
        };
        let shapes: ShapeMap = [
            (
                "conv_w",
                shape(&[Some(16), Some(3), Some(3), Some(3)], data_type::FLOAT),
            ),
            ("input", shape(&[None, Some(3), Some(28), Some(28)], data_type::FLOAT)),
            ("conv", shape(&[None, Some(16), Some(28), Some(28)], data_type::FLOAT)),
            (
                "indices",
                shape(&[None, Some(16), Some(14), Some(14)], data_type::INT64),
            ),
            ("logits", shape(&[None, Some(10)], data_type::FLOAT)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        assert_eq!(activation_floats(&shapes), 3 * 28 * 28 + 16 * 28 * 28 + 10);
    }
}
