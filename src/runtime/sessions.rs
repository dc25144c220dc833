//! ONNX Runtime sessions, shared by every worker: one per (model, graph kind), the forward ones
//! made at start, backward ones on first use and kept under a memory budget. Every session runs on
//! the environment's one intra-op pool, and a model's forward and backward sessions share its
//! prepacked weights. ort's `Session::run` takes `&mut self`, so each session sits behind a lock;
//! a pass already uses every core of the pool, so two jobs on one model lose little by taking turns.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use ort::session::builder::{GraphOptimizationLevel, PrepackedWeights};
use ort::session::Session;

use super::batching::{Batching, Named, PassCounters, SharedSession};
use super::gradients::{GradientCache, GradientKey, Seed};
use super::tensor::{Tensor, TensorData};
use super::{LoadedModel, Registry, RuntimeError};
use crate::config::ExecutionProvider;
use crate::onnx::autodiff::WEIGHTS_INPUT;

/// Creates a session for model bytes on the environment's thread pool and execution providers.
pub fn create_session_from_bytes(env: &ort::environment::Environment, bytes: &[u8]) -> Result<Session, String> {
    build_session(env, bytes, None, ExecutionProvider::Cpu)
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
type Slot = Arc<OnceLock<Result<Shared, String>>>;

/// A backward session kept under the memory budget.
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
}

impl SessionStore {
    fn share(&self, session: Session) -> Shared {
        Arc::new(SharedSession::new(
            session,
            self.options.batching,
            self.counters.clone(),
        ))
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
    backward: Mutex<(HashMap<GradientKey, Kept>, u64)>,
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
        for model in registry.iter() {
            let weights = PrepackedWeights::new();
            let session = build_session(env, &model.bytes, Some(&weights), options.provider).map_err(|e| {
                format!(
                    "{}: ONNX Runtime cannot load this model: {e}",
                    model.dir.join("model.onnx").display()
                )
            })?;
            let shared = Arc::new(SharedSession::new(session, options.batching, counters.clone()));
            forward.insert(model.name.clone(), shared);
            prepacked.insert(model.name.clone(), weights);
        }
        Ok(Self {
            env,
            registry,
            gradients,
            options,
            counters,
            forward,
            prepacked,
            backward: Mutex::new((HashMap::new(), 0)),
        })
    }

    /// Backward sessions alive now, and the bytes of their models.
    pub fn backward_kept(&self) -> (usize, u64) {
        let kept = self.backward.lock().unwrap_or_else(|p| p.into_inner());
        let live: Vec<&Kept> = kept
            .0
            .values()
            .filter(|k| matches!(k.slot.get(), Some(Ok(_))))
            .collect();
        (live.len(), live.iter().map(|k| k.bytes).sum())
    }

    /// The backward session for `key`, made on first use; the least recently used ones beyond
    /// `max_model_memory` are dropped (a run holding one finishes first).
    fn backward_session(&self, model: &LoadedModel, key: &GradientKey, bytes: &[u8]) -> Result<Shared, RuntimeError> {
        let slot = {
            let mut kept = self.backward.lock().unwrap_or_else(|p| p.into_inner());
            kept.1 += 1;
            let now = kept.1;
            let entry = kept.0.entry(key.clone()).or_insert_with(|| Kept {
                slot: Slot::default(),
                bytes: bytes.len() as u64,
                last_used: now,
            });
            entry.last_used = now;
            entry.slot.clone()
        };
        let made = slot
            .get_or_init(|| {
                build_session(self.env, bytes, self.prepacked.get(&model.name), self.options.provider)
                    .map(|s| self.share(s))
            })
            .clone()
            .map_err(|message| RuntimeError::NotDifferentiable {
                model: model.name.clone(),
                message,
            })?;
        self.evict_beyond_budget(key);
        Ok(made)
    }

    fn evict_beyond_budget(&self, keep: &GradientKey) {
        let mut kept = self.backward.lock().unwrap_or_else(|p| p.into_inner());
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
                    tracing::info!(model = %k.model, layers = ?k.layers, rules = ?k.rules, "backward session dropped (max_model_memory)");
                    kept.0.remove(&k);
                }
                None => return,
            }
        }
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

    /// The model of that name.
    pub fn model(&self, name: &str) -> Result<Arc<LoadedModel>, RuntimeError> {
        self.store
            .registry
            .get(name)
            .cloned()
            .ok_or_else(|| RuntimeError::UnknownModel(name.to_string()))
    }

    /// Most rows per pass.
    pub fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// Runs `model` on `input` (first axis = batch) and returns every tensor output, rows
    /// concatenated back together.
    pub fn run(
        &mut self,
        model: &str,
        input_name: &str,
        input: &Tensor,
    ) -> Result<HashMap<String, Tensor>, RuntimeError> {
        let session = self
            .store
            .forward
            .get(model)
            .cloned()
            .ok_or_else(|| RuntimeError::UnknownModel(model.to_string()))?;
        self.run_batched(&session, model, &[(input_name, input)])
    }

    /// Runs the backward model for `key` on `input`, with target `weights` (shaped like the
    /// scores) when the key's seed is fed weights; a top-prediction key takes none.
    pub fn gradients(
        &mut self,
        key: &GradientKey,
        input: &Tensor,
        weights: Option<&Tensor>,
    ) -> Result<GradientPass, RuntimeError> {
        let model = self.model(&key.model)?;
        let built = self.store.gradients.get(&model, key)?;
        let session = self.store.backward_session(&model, key, &built.bytes)?;
        let mut feeds = vec![(model.spec.input.as_str(), input)];
        match (key.seed, weights) {
            (Seed::Weights, Some(w)) => feeds.push((WEIGHTS_INPUT, w)),
            (Seed::TopPrediction, None) => {}
            _ => {
                return Err(RuntimeError::Inference {
                    model: model.name.clone(),
                    message: "target weights are fed exactly when the graph does not choose them".into(),
                })
            }
        }
        let mut outputs = self.run_batched(&session, &model.name, &feeds)?;
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

    /// Runs a session on feeds that share their first (batch) axis, `max_batch` rows at a time.
    fn run_batched(
        &mut self,
        session: &Shared,
        model: &str,
        feeds: &[(&str, &Tensor)],
    ) -> Result<HashMap<String, Tensor>, RuntimeError> {
        let rows = feeds.first().map(|(_, t)| t.rows()).unwrap_or(0);
        if feeds.iter().any(|(_, t)| t.rows() != rows) {
            return Err(RuntimeError::Inference {
                model: model.to_string(),
                message: "feeds differ in batch size".into(),
            });
        }
        let mut parts: HashMap<String, Vec<Tensor>> = HashMap::new();
        let mut start = 0;
        while start < rows {
            let end = (start + self.max_batch).min(rows);
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
