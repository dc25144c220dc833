//! ONNX Runtime sessions, shared by every worker: one per (model, graph kind), the forward ones
//! made at start, backward ones on first use and kept under a memory budget. Every session runs on
//! the environment's one intra-op pool, and a model's forward and backward sessions share its
//! prepacked weights. ort's `Session::run` takes `&mut self`, so each session sits behind a lock;
//! a pass already uses every core of the pool, so two jobs on one model lose little by taking turns.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};

use ort::session::builder::{GraphOptimizationLevel, PrepackedWeights};
use ort::session::Session;

use super::batching::{Batching, Named, PassCounters, SharedSession};
use super::budget::ByteBudget;
use super::gradients::{GradientCache, GradientKey, GradientOutputs};
use super::tensor::{Tensor, TensorData};
use super::{LoadedModel, Registry, RuntimeError};
use crate::config::ExecutionProvider;
use crate::onnx::autodiff::WEIGHTS_INPUT;
use crate::onnx::dropout::{mask_input, MaskSite};

/// Creates a session for model bytes on the environment's thread pool and execution providers.
pub fn create_session_from_bytes(env: &ort::environment::Environment, bytes: &[u8]) -> Result<Session, String> {
    build_session(env, bytes, None, ExecutionProvider::Cpu, false)
}

/// Creates a session for `model`.
pub fn create_session(env: &ort::environment::Environment, model: &LoadedModel) -> Result<Session, String> {
    create_session_from_bytes(env, &model.bytes)
}

fn build_session(
    env: &ort::environment::Environment,
    bytes: &[u8],
    prepacked: Option<&PrepackedWeights>,
    provider: ExecutionProvider,
    arena: bool,
) -> Result<Session, String> {
    // ort's builder errors carry the builder and are not Send: turn each into text right away.
    let builder = Session::builder(env).map_err(|e| e.to_string())?;
    let mut builder = builder
        .with_optimization_level(GraphOptimizationLevel::All)
        .map_err(|e| e.to_string())?;
    if let Some(weights) = prepacked {
        builder = builder.with_prepacked_weights(weights).map_err(|e| e.to_string())?;
    }
    if provider == ExecutionProvider::Cuda {
        builder = with_cuda(builder)?;
    }
    // Without the arena a pass's working memory goes back when the pass ends; with it, each
    // session keeps the peak of its largest pass for good.
    let cpu = ort::ep::CPU::default().with_arena_allocator(arena).build();
    builder = builder.with_execution_providers([cpu]).map_err(|e| e.to_string())?;
    builder.commit_from_memory(bytes).map_err(|e| e.to_string())
}

/// Registers the CUDA provider when the loaded library has it; otherwise says so once and stays
/// on the CPU.
fn with_cuda(builder: ort::session::builder::SessionBuilder) -> Result<ort::session::builder::SessionBuilder, String> {
    use ort::ep::ExecutionProvider as _;
    static FALLBACK: std::sync::Once = std::sync::Once::new();
    if ort::ep::CUDA::is_available().unwrap_or(false) {
        return builder
            .with_execution_providers([ort::ep::CUDA::default().build().error_on_failure()])
            .map_err(|e| e.to_string());
    }
    FALLBACK.call_once(|| {
        tracing::warn!(
            "execution_provider = \"cuda\" but the loaded ONNX Runtime has no CUDA provider; running on the CPU"
        )
    });
    Ok(builder)
}

/// What one gradient pass returns, rows concatenated over batches.
#[derive(Debug)]
pub struct GradientPass {
    /// The model's score output.
    pub scores: Tensor,
    /// Gradient of `sum(scores * weights)` w.r.t. the input.
    pub input_grad: Tensor,
    /// Per requested layer: (activation, gradient).
    pub layers: Vec<(Tensor, Tensor)>,
    /// Each row's class, when the graph chose it ([`Seed::TopPrediction`]).
    pub chosen: Option<Vec<usize>>,
}

type Shared = Arc<SharedSession>;
type Backward = (Shared, GradientOutputs);
/// A derived session and, for a backward model, its outputs.
type Slot = Arc<OnceLock<Result<(Shared, Option<GradientOutputs>), String>>>;

/// A model derived from a loaded one, built on first use and kept under `max_model_memory`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum DerivedKey {
    /// The backward model of a gradient key.
    Backward(GradientKey),
    /// The model with dropout masks as inputs at these sites.
    Masked(String, SiteKey),
    /// The backward model of a gradient key through the model with dropout masks at these sites.
    MaskedBackward(GradientKey, SiteKey),
    /// The model with these tensors as further outputs (a reference set's embeddings).
    Outputs(String, Vec<String>),
}

/// Mask sites as a key: (tensor, only this node).
type SiteKey = Vec<(String, Option<String>)>;

fn site_key(sites: &[MaskSite]) -> SiteKey {
    sites.iter().map(|s| (s.tensor.clone(), s.only_node.clone())).collect()
}

impl DerivedKey {
    fn model(&self) -> &str {
        match self {
            DerivedKey::Backward(k) | DerivedKey::MaskedBackward(k, _) => &k.model,
            DerivedKey::Masked(model, _) | DerivedKey::Outputs(model, _) => model,
        }
    }
}

/// Which kind of pass a row runs through.
#[derive(Debug, Clone, Copy)]
enum Pass {
    Forward,
    Backward,
}

/// The working memory of the passes running at once, across every worker: a pass waits until its
/// bytes fit beside those running (a pass alone always runs), so concurrent jobs do not each add a
/// pass's peak.
/// A derived session kept under the memory budget.
struct Kept {
    slot: Slot,
    bytes: u64,
    last_used: u64,
}

/// How the store makes and shares sessions.
#[derive(Debug, Clone, Copy)]
pub struct StoreOptions {
    /// Where passes run.
    pub provider: ExecutionProvider,
    /// Bytes of backward models kept as live sessions.
    pub max_model_memory: u64,
    /// How concurrent requests on one session are combined.
    pub batching: Batching,
    /// Keep ONNX Runtime's CPU arena (each session holds its largest pass's memory).
    pub memory_arena: bool,
    /// Bytes one backward pass may hold; gradient rows are chunked to fit.
    pub max_pass_bytes: u64,
}

impl SessionStore {
    fn share_with(&self, session: Session, batching: Batching) -> Shared {
        Arc::new(SharedSession::new(session, batching, self.counters.clone()))
    }

    /// True when `model`'s graph fixes its batch at one row (a loaded model, or a lent copy of one).
    fn one_row(&self, model: &str) -> bool {
        self.one_row.contains(model)
            || self
                .lent
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(model)
                .is_some_and(|(m, _)| m.gradient_report.get().is_some_and(|r| r.one_row_per_pass))
    }
}

/// Every session of the service.
pub struct SessionStore {
    env: &'static ort::environment::Environment,
    registry: Arc<Registry>,
    gradients: Arc<GradientCache>,
    options: StoreOptions,
    counters: PassCounters,
    forward: HashMap<String, Shared>,
    prepacked: HashMap<String, PrepackedWeights>,
    /// Bytes one row holds in a backward pass, per model (absent: shapes unknown, not budgeted).
    row_bytes: HashMap<String, u64>,
    /// Values in the input row those bytes were probed at: a text model's longest text.
    probe_len: HashMap<String, usize>,
    /// Models whose graph fixes the batch at one row: one row per pass, never batched with others.
    one_row: HashSet<String>,
    derived: Mutex<(HashMap<DerivedKey, Kept>, u64)>,
    /// Models a job made for itself (randomised copies), with their forward sessions, by name.
    lent: Mutex<HashMap<String, (Arc<LoadedModel>, Shared)>>,
    budget: ByteBudget,
}

impl SessionStore {
    /// Creates the forward session of every model (an error names the model that failed).
    pub fn new(
        env: &'static ort::environment::Environment,
        registry: Arc<Registry>,
        gradients: Arc<GradientCache>,
        options: StoreOptions,
        counters: PassCounters,
    ) -> Result<Self, String> {
        let mut forward = HashMap::new();
        let mut prepacked = HashMap::new();
        let mut row_bytes = HashMap::new();
        let mut probe_len = HashMap::new();
        let mut one_row = HashSet::new();
        for model in registry.iter() {
            let weights = PrepackedWeights::new();
            let session = build_session(
                env,
                &model.bytes,
                Some(&weights),
                options.provider,
                options.memory_arena,
            )
            .map_err(|e| {
                format!(
                    "{}: ONNX Runtime cannot load this model: {e}",
                    model.dir.join("model.onnx").display()
                )
            })?;
            // A graph that fixes its batch at one row runs alone, one row per pass.
            let batching = if gradients.fixes_batch(model) {
                tracing::warn!(model = %model.name, "the graph fixes its batch at one row: it runs one row per pass");
                one_row.insert(model.name.clone());
                Batching {
                    enabled: false,
                    ..options.batching
                }
            } else {
                options.batching
            };
            let shared = Arc::new(SharedSession::new(session, batching, counters.clone()));
            forward.insert(model.name.clone(), shared);
            prepacked.insert(model.name.clone(), weights);
            if let Some(bytes) = gradients.row_bytes(model) {
                row_bytes.insert(model.name.clone(), bytes);
                let dims = super::gradients::sample_dims(&model.spec);
                probe_len.insert(model.name.clone(), dims.iter().skip(1).product());
            }
        }
        Ok(Self {
            env,
            registry,
            gradients,
            options,
            counters,
            forward,
            prepacked,
            row_bytes,
            probe_len,
            one_row,
            derived: Mutex::new((HashMap::new(), 0)),
            lent: Mutex::new(HashMap::new()),
            budget: ByteBudget::new(options.max_pass_bytes),
        })
    }

    /// The backward session for `key` (through the model with dropout masks at `sites`, when
    /// any) and its output names.
    fn backward_session(
        &self,
        model: &LoadedModel,
        key: &GradientKey,
        sites: &[MaskSite],
    ) -> Result<Backward, RuntimeError> {
        let derived = match sites {
            [] => DerivedKey::Backward(key.clone()),
            _ => DerivedKey::MaskedBackward(key.clone(), site_key(sites)),
        };
        let (session, outputs) = self
            .derived_session(&derived, || {
                let built = match sites {
                    [] => self.gradients.build(model, key)?,
                    _ => self.gradients.build_masked(model, key, sites)?,
                };
                Ok((built.bytes, Some(built.outputs)))
            })
            .map_err(|message| RuntimeError::NotDifferentiable {
                model: model.name.clone(),
                message,
            })?;
        let outputs = outputs.ok_or_else(|| RuntimeError::Inference {
            model: model.name.clone(),
            message: "a backward session without outputs".into(),
        })?;
        Ok((session, outputs))
    }

    /// The session of `model` with dropout masks as inputs at `sites`.
    fn masked_session(&self, model: &LoadedModel, sites: &[MaskSite]) -> Result<Shared, RuntimeError> {
        let key = DerivedKey::Masked(model.name.clone(), site_key(sites));
        let (session, _) = self
            .derived_session(&key, || Ok((self.gradients.masked(model, sites)?, None)))
            .map_err(|message| RuntimeError::Inference {
                model: model.name.clone(),
                message: format!("cannot build the model with dropout masks: {message}"),
            })?;
        Ok(session)
    }

    /// The session of `model` with `names` as further outputs.
    fn outputs_session(&self, model: &LoadedModel, names: &[String]) -> Result<Shared, RuntimeError> {
        let key = DerivedKey::Outputs(model.name.clone(), names.to_vec());
        let (session, _) = self
            .derived_session(&key, || Ok((self.gradients.with_outputs(model, names)?, None)))
            .map_err(|message| RuntimeError::Inference {
                model: model.name.clone(),
                message: format!("cannot build the model with further outputs: {message}"),
            })?;
        Ok(session)
    }

    /// The derived session for `key`, built by `build` on first use (other callers wait for that
    /// build); the least recently used ones beyond `max_model_memory` are dropped (a run holding
    /// one finishes first) and built again when next needed.
    fn derived_session(
        &self,
        key: &DerivedKey,
        build: impl FnOnce() -> Result<(Vec<u8>, Option<GradientOutputs>), String>,
    ) -> Result<(Shared, Option<GradientOutputs>), String> {
        let slot = {
            let mut kept = self.derived.lock().unwrap_or_else(|p| p.into_inner());
            kept.1 += 1;
            let now = kept.1;
            let entry = kept.0.entry(key.clone()).or_insert_with(|| Kept {
                slot: Slot::default(),
                bytes: 0,
                last_used: now,
            });
            entry.last_used = now;
            entry.slot.clone()
        };
        let mut size = None;
        let made = slot
            .get_or_init(|| {
                let (bytes, outputs) = build()?;
                size = Some(bytes.len() as u64);
                let prepacked = self.prepacked.get(key.model());
                let session = build_session(
                    self.env,
                    &bytes,
                    prepacked,
                    self.options.provider,
                    self.options.memory_arena,
                )?;
                // DeepLIFT's rows pair up by halves of their pass: another request's rows must not
                // join it.
                let pairs = matches!(key, DerivedKey::Backward(k) | DerivedKey::MaskedBackward(k, _)
                    if k.rules == crate::onnx::autodiff::RuleSet::DeepLiftRescale);
                let batching = Batching {
                    enabled: self.options.batching.enabled && !pairs && !self.one_row(key.model()),
                    ..self.options.batching
                };
                Ok((self.share_with(session, batching), outputs))
            })
            .clone()?;
        // Only a build adds bytes: then count them, and drop others beyond the budget.
        if let Some(bytes) = size {
            {
                let mut kept = self.derived.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(entry) = kept.0.get_mut(key) {
                    entry.bytes = bytes;
                }
            }
            self.evict_beyond_budget(key);
        }
        Ok(made)
    }

    fn evict_beyond_budget(&self, keep: &DerivedKey) {
        let mut kept = self.derived.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let total: u64 = kept.0.values().map(|k| k.bytes).sum();
            if total <= self.options.max_model_memory {
                return;
            }
            let oldest = kept
                .0
                .iter()
                .filter(|(k, _)| *k != keep)
                .min_by_key(|(_, v)| v.last_used)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => {
                    tracing::info!(key = ?k, "derived session dropped (max_model_memory)");
                    kept.0.remove(&k);
                }
                None => return,
            }
        }
    }
}

/// A model lent to the store for one job: served by name like a loaded one until dropped, when its
/// sessions and prepared graph go.
pub struct LentModel {
    store: Arc<SessionStore>,
    /// The lent model.
    pub model: Arc<LoadedModel>,
}

impl Drop for LentModel {
    fn drop(&mut self) {
        let name = &self.model.name;
        self.store.lent.lock().unwrap_or_else(|p| p.into_inner()).remove(name);
        self.store
            .derived
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .retain(|k, _| k.model() != name);
        self.store.gradients.forget(name);
    }
}

/// The key whose backward graph serves `key`: plain gradients come from the graph that also gives
/// the default CAM layer's activation and gradient (a few more outputs), so saliency, Integrated
/// Gradients and Grad-CAM share one session instead of holding two copies of the model's weights.
/// True when the layer was added here, not asked for.
fn with_cam_layer<'k>(model: &LoadedModel, key: &'k GradientKey) -> (std::borrow::Cow<'k, GradientKey>, bool) {
    let cam = model.gradient_report.get().and_then(|r| r.default_cam_layer.clone());
    match cam {
        Some(layer) if key.layers.is_empty() && key.rules == crate::onnx::autodiff::RuleSet::Standard => (
            std::borrow::Cow::Owned(GradientKey {
                layers: vec![layer],
                ..key.clone()
            }),
            true,
        ),
        _ => (std::borrow::Cow::Borrowed(key), false),
    }
}

/// A worker's handle on the shared sessions.
pub struct WorkerRuntime {
    store: Arc<SessionStore>,
    max_batch: usize,
}

impl WorkerRuntime {
    /// A handle on `store`.
    pub fn new(store: Arc<SessionStore>) -> Self {
        let max_batch = store.options.batching.max_batch;
        Self { store, max_batch }
    }

    /// The model of that name (a loaded one, or one lent for a job).
    pub fn model(&self, name: &str) -> Result<Arc<LoadedModel>, RuntimeError> {
        if let Some(m) = self.store.registry.get(name) {
            return Ok(m.clone());
        }
        let lent = self.store.lent.lock().unwrap_or_else(|p| p.into_inner());
        lent.get(name)
            .map(|(m, _)| m.clone())
            .ok_or_else(|| RuntimeError::UnknownModel(name.to_string()))
    }

    /// Serves `model` (a copy a job made, under a name of its own) until the returned guard drops.
    pub fn lend(&self, model: LoadedModel) -> Result<LentModel, RuntimeError> {
        let session = build_session(
            self.store.env,
            &model.bytes,
            None,
            self.store.options.provider,
            self.store.options.memory_arena,
        )
        .map_err(|message| RuntimeError::Inference {
            model: model.name.clone(),
            message,
        })?;
        let one_row = model.gradient_report.get().is_some_and(|r| r.one_row_per_pass);
        let model = Arc::new(model);
        let shared = self.store.share_with(
            session,
            Batching {
                enabled: self.store.options.batching.enabled && !one_row,
                ..self.store.options.batching
            },
        );
        self.store
            .lent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(model.name.clone(), (model.clone(), shared));
        Ok(LentModel {
            store: self.store.clone(),
            model,
        })
    }

    /// Most rows per pass.
    pub fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// Most rows per backward pass of `model`: `max_batch`, fewer when that many rows would hold
    /// more than `max_pass_bytes` of activations and gradients (a photo model's 64-row backward
    /// pass holds gigabytes; 8 rows run as fast per row).
    pub fn gradient_rows(&self, model: &LoadedModel) -> usize {
        self.gradient_rows_for(model, usize::MAX)
    }

    /// Most rows per forward pass of `model`, by the same budget.
    pub fn forward_rows(&self, model: &LoadedModel) -> usize {
        self.forward_rows_for(model, usize::MAX)
    }

    /// [`Self::gradient_rows`] for input rows of `row_len` values (a text of some tokens).
    pub fn gradient_rows_for(&self, model: &LoadedModel, row_len: usize) -> usize {
        let bytes = self.scaled(&model.name, self.row_bytes(&model.name, Pass::Backward), row_len);
        self.rows_per_pass(&model.name, bytes)
    }

    /// [`Self::forward_rows`] for input rows of `row_len` values.
    pub fn forward_rows_for(&self, model: &LoadedModel, row_len: usize) -> usize {
        let bytes = self.scaled(&model.name, self.row_bytes(&model.name, Pass::Forward), row_len);
        self.rows_per_pass(&model.name, bytes)
    }

    /// A row's bytes for an input row of `row_len` values, from the bytes probed at the model's
    /// largest row: a text's sequence tensors grow with its tokens linearly (embeddings, hidden
    /// states) or quadratically (attention), so their size at `row_len` is at most the probed one
    /// times `row_len / probed`; the few per-text tensors (pooled embedding, scores) are small.
    fn scaled(&self, model: &str, bytes: u64, row_len: usize) -> u64 {
        match self.store.probe_len.get(model) {
            Some(&probed) if probed > 0 && row_len < probed => {
                (u128::from(bytes) * row_len as u128 / probed as u128).max(1) as u64
            }
            _ => bytes,
        }
    }

    fn rows_per_pass(&self, model: &str, row_bytes: u64) -> usize {
        if self.store.one_row(model) {
            return 1;
        }
        let budget = self.store.options.max_pass_bytes;
        usize::try_from(budget / row_bytes.max(1))
            .unwrap_or(usize::MAX)
            .clamp(1, self.max_batch)
    }

    /// Bytes one row holds in a pass (0 when the model's shapes are unknown: not budgeted).
    fn row_bytes(&self, model: &str, pass: Pass) -> u64 {
        let all = self.store.row_bytes.get(model).copied().unwrap_or(0);
        match pass {
            // The backward estimate counts activations, gradients and masks: about three times
            // what a forward pass holds at its peak.
            Pass::Forward => all / 3,
            Pass::Backward => all,
        }
    }

    /// Runs `model` on `input` (first axis = batch) and returns every tensor output, rows
    /// concatenated back together.
    pub fn run(
        &mut self,
        model: &str,
        input_name: &str,
        input: &Tensor,
    ) -> Result<HashMap<String, Tensor>, RuntimeError> {
        let session = match self.store.forward.get(model) {
            Some(s) => s.clone(),
            None => self
                .store
                .lent
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(model)
                .map(|(_, s)| s.clone())
                .ok_or_else(|| RuntimeError::UnknownModel(model.to_string()))?,
        };
        let row_bytes = self.row_bytes(model, Pass::Forward);
        self.run_batched(&session, model, &[(input_name, input)], row_bytes, false)
    }

    /// Runs `model` with dropout masks at `sites` on `input` (first axis = batch), `masks[k]`
    /// holding one row of site `k`'s mask per input row; returns every tensor output.
    pub fn run_masked(
        &mut self,
        model: &LoadedModel,
        sites: &[MaskSite],
        input: &Tensor,
        masks: &[Tensor],
    ) -> Result<HashMap<String, Tensor>, RuntimeError> {
        let session = self.store.masked_session(model, sites)?;
        let names: Vec<String> = (0..masks.len()).map(mask_input).collect();
        let mut feeds = vec![(model.spec.input.as_str(), input)];
        feeds.extend(names.iter().map(String::as_str).zip(masks));
        let row_bytes = self.row_bytes(&model.name, Pass::Forward);
        self.run_batched(&session, &model.name, &feeds, row_bytes, false)
    }

    /// Runs `model` on `input` (first axis = batch) with the tensors `names` as further outputs;
    /// returns every output.
    pub fn run_with_outputs(
        &mut self,
        model: &LoadedModel,
        names: &[String],
        input: &Tensor,
    ) -> Result<HashMap<String, Tensor>, RuntimeError> {
        let session = self.store.outputs_session(model, names)?;
        let row_bytes = self.row_bytes(&model.name, Pass::Forward);
        self.run_batched(
            &session,
            &model.name,
            &[(model.spec.input.as_str(), input)],
            row_bytes,
            false,
        )
    }

    /// Runs the backward model for `key` on `input` with target `weights` (shaped like the
    /// scores); a row of all-zero weights explains its top class, chosen in the graph, when the
    /// model's output can be ranked (the pass's `chosen` says which class each row had).
    pub fn gradients(
        &mut self,
        key: &GradientKey,
        input: &Tensor,
        weights: &Tensor,
    ) -> Result<GradientPass, RuntimeError> {
        self.masked_gradients(key, &[], input, weights, &[])
    }

    /// [`Self::gradients`] through the model with dropout masks at `sites`, `masks[k]` holding one
    /// row of site `k`'s mask per input row.
    pub fn masked_gradients(
        &mut self,
        key: &GradientKey,
        sites: &[MaskSite],
        input: &Tensor,
        weights: &Tensor,
        masks: &[Tensor],
    ) -> Result<GradientPass, RuntimeError> {
        let model = self.model(&key.model)?;
        let plain = key;
        let (key, unasked) = with_cam_layer(&model, key);
        let backward = match self.store.backward_session(&model, &key, sites) {
            Err(_) if unasked => self.store.backward_session(&model, plain, sites)?,
            built => built?,
        };
        let mut pass = self.gradient_pass(&model, &backward, input, weights, masks, key.rules)?;
        if unasked {
            pass.layers.clear();
        }
        Ok(pass)
    }

    fn gradient_pass(
        &mut self,
        model: &LoadedModel,
        (session, built): &Backward,
        input: &Tensor,
        weights: &Tensor,
        masks: &[Tensor],
        rules: crate::onnx::autodiff::RuleSet,
    ) -> Result<GradientPass, RuntimeError> {
        // DeepLIFT's rows pair up by halves of their pass.
        let whole = rules == crate::onnx::autodiff::RuleSet::DeepLiftRescale;
        let names: Vec<String> = (0..masks.len()).map(mask_input).collect();
        let mut feeds = vec![(model.spec.input.as_str(), input), (WEIGHTS_INPUT, weights)];
        feeds.extend(names.iter().map(String::as_str).zip(masks));
        let row_bytes = self.row_bytes(&model.name, Pass::Backward);
        let mut outputs = self.run_batched(session, &model.name, &feeds, row_bytes, whole)?;
        let mut take = |name: &str| {
            outputs.remove(name).ok_or_else(|| RuntimeError::Inference {
                model: model.name.clone(),
                message: format!("the backward model gave no `{name}`"),
            })
        };
        let scores = take(&model.spec.output)?;
        let input_grad = take(&built.input_grad)?;
        let mut layers = Vec::new();
        for (activation, grad) in &built.layers {
            layers.push((take(activation)?, take(grad)?));
        }
        let chosen = match &built.target_index {
            Some(name) => Some(match take(name)?.data {
                TensorData::I64(v) => v.into_iter().map(|i| i.max(0) as usize).collect(),
                TensorData::F32(_) => Vec::new(),
            }),
            None => None,
        };
        Ok(GradientPass {
            scores,
            input_grad,
            layers,
            chosen,
        })
    }

    /// Runs a session on feeds that share their first (batch) axis, as many rows per pass as the
    /// pass budget allows (`row_bytes` each), each pass holding a lease on the budget shared by
    /// every worker.
    fn run_batched(
        &mut self,
        session: &Shared,
        model: &str,
        feeds: &[(&str, &Tensor)],
        row_bytes: u64,
        whole: bool,
    ) -> Result<HashMap<String, Tensor>, RuntimeError> {
        let rows = feeds.first().map(|(_, t)| t.rows()).unwrap_or(0);
        let row_bytes = self.scaled(model, row_bytes, feeds.first().map_or(usize::MAX, |(_, t)| t.row_len()));
        if feeds.iter().any(|(_, t)| t.rows() != rows) {
            return Err(RuntimeError::Inference {
                model: model.to_string(),
                message: "feeds differ in batch size".into(),
            });
        }
        let mut parts: HashMap<String, Vec<Tensor>> = HashMap::new();
        let mut start = 0;
        // A pass whose rows depend on each other (DeepLIFT's pairs) is never split; the budget
        // still lets it run alone.
        let per_pass = if whole {
            if rows > 1 && self.store.one_row(model) {
                return Err(RuntimeError::UnsupportedModel {
                    model: model.to_string(),
                    message: format!(
                        "the graph fixes its batch at one row, and this pass needs its {rows} rows together \
                         (DeepLIFT's input and reference)"
                    ),
                });
            }
            rows.max(1)
        } else {
            self.rows_per_pass(model, row_bytes)
        };
        while start < rows {
            let end = (start + per_pass).min(rows);
            let _lease = self.store.budget.lease(row_bytes.saturating_mul((end - start) as u64));
            let chunk: Named = feeds
                .iter()
                .map(|(n, t)| {
                    let part = if start == 0 && end == rows {
                        (*t).clone()
                    } else {
                        t.slice_rows(start, end)
                    };
                    (n.to_string(), part)
                })
                .collect();
            for (name, t) in session.run(model, chunk)? {
                parts.entry(name).or_default().push(t);
            }
            start = end;
        }
        parts
            .into_iter()
            .map(|(name, ts)| {
                let joined = Tensor::concat_rows(ts).ok_or_else(|| RuntimeError::Inference {
                    model: model.to_string(),
                    message: format!("output `{name}` changed shape between batches"),
                })?;
                Ok((name, joined))
            })
            .collect()
    }
}
