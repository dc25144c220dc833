//! ONNX Runtime sessions, shared by every worker: one per (model, graph kind), the forward ones
//! made at start, backward ones on first use and kept under a memory budget. Every session runs on
//! the environment's one intra-op pool, and a model's forward and backward sessions share its
//! prepacked weights. ort's `Session::run` takes `&mut self`, so each session sits behind a lock;
//! a pass already uses every core of the pool, so two jobs on one model lose little by taking turns.
//!
//! Here: the store and its forward sessions. `build` sets a session's options, `cache` keeps the
//! derived (backward, masked, further-output) sessions, `rows` sizes passes from the pass budget,
//! `worker` is a worker's handle that runs passes.

mod build;
mod cache;
mod rows;
mod worker;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use ort::session::builder::PrepackedWeights;
use ort::session::Session;

use super::batching::{Batching, PassCounters, SharedSession};
use super::budget::ByteBudget;
use super::gradients::GradientCache;
use super::{LoadedModel, Registry};
use crate::config::ExecutionProvider;
use build::{build_inline_session, build_session};
use cache::{DerivedKey, Kept};

pub use build::{create_session, create_session_from_bytes};
pub use worker::{GradientPass, LentModel, Sizing, WorkerRuntime};

type Shared = Arc<SharedSession>;

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
    /// Passes of at most these bytes run on the caller's thread ([`crate::config::Config::inline_pass_bytes`]).
    pub inline_pass_bytes: u64,
    /// Bytes one backward pass may hold; gradient rows are chunked to fit.
    pub max_pass_bytes: u64,
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
    /// Derived sessions by key, and the clock their last uses are stamped with.
    derived: Mutex<(HashMap<DerivedKey, Kept>, u64)>,
    /// Models a job made for itself (randomised copies), with their forward sessions, by name.
    lent: Mutex<HashMap<String, (Arc<LoadedModel>, Shared)>>,
    /// The working memory of the passes running at once, across every worker: a pass waits until
    /// its bytes fit beside those running (a pass alone always runs), so concurrent jobs do not
    /// each add a pass's peak.
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
            let model_row_bytes = gradients.row_bytes(model);
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
            let mut shared = SharedSession::new(session, batching, counters.clone());
            if let Some((inline, rows)) = inline_session(env, &options, model_row_bytes, &model.bytes, &weights) {
                shared = shared.with_inline(inline, rows);
            }
            forward.insert(model.name.clone(), Arc::new(shared));
            prepacked.insert(model.name.clone(), weights);
            if let Some(bytes) = model_row_bytes {
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

    fn share_with(&self, session: Session, batching: Batching) -> Shared {
        Arc::new(SharedSession::new(session, batching, self.counters.clone()))
    }

    /// [`Self::share_with`], with a session of `bytes` (a graph derived from `model`) on the
    /// caller's thread for its small passes ([`inline_session`]).
    fn share_derived(&self, model: &str, session: Session, batching: Batching, bytes: &[u8]) -> Shared {
        let mut shared = SharedSession::new(session, batching, self.counters.clone());
        let prepacked = self.prepacked.get(model);
        let row_bytes = self.row_bytes.get(model).copied();
        if let Some((inline, rows)) =
            prepacked.and_then(|w| inline_session(self.env, &self.options, row_bytes, bytes, w))
        {
            shared = shared.with_inline(inline, rows);
        }
        Arc::new(shared)
    }

    /// True when `model`'s graph fixes its batch at one row (a loaded model, or a lent copy of one).
    fn one_row(&self, model: &LoadedModel) -> bool {
        self.one_row.contains(&model.name) || model.gradient_report.get().is_some_and(|r| r.one_row_per_pass)
    }
}

/// Graphs larger than this never get a second session on the caller's thread: it holds the
/// weights again.
const INLINE_MAX_MODEL_BYTES: usize = 16 * 1024 * 1024;

/// A session of `bytes` that runs on the caller's thread, and the most rows a pass run there may
/// hold (`inline_pass_bytes` over the model's bytes per row), when a pass of one row fits and the
/// graph is small; none on a GPU, or when the build fails (the pool serves every pass then).
fn inline_session(
    env: &'static ort::environment::Environment,
    options: &StoreOptions,
    row_bytes: Option<u64>,
    bytes: &[u8],
    prepacked: &PrepackedWeights,
) -> Option<(Session, usize)> {
    let rows = usize::try_from(options.inline_pass_bytes / row_bytes?.max(1)).ok()?;
    if rows == 0 || bytes.len() > INLINE_MAX_MODEL_BYTES || options.provider != ExecutionProvider::Cpu {
        return None;
    }
    match build_inline_session(env, bytes, Some(prepacked), options.memory_arena) {
        Ok(session) => Some((session, rows)),
        Err(e) => {
            tracing::warn!(error = %e, "no session on the worker's thread; every pass runs on the pool");
            None
        }
    }
}
