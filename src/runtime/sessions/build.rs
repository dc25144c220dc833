//! Building ONNX Runtime sessions: the options every session of the service shares (graph
//! optimisation, prepacked weights, execution provider, CPU arena).

use ort::session::builder::{GraphOptimizationLevel, PrepackedWeights};
use ort::session::Session;

use crate::config::ExecutionProvider;
use crate::runtime::LoadedModel;

/// Creates a session for model bytes on the environment's thread pool and execution providers.
pub fn create_session_from_bytes(env: &ort::environment::Environment, bytes: &[u8]) -> Result<Session, String> {
    build_session(env, bytes, None, ExecutionProvider::Cpu, false)
}

/// Creates a CPU session that runs every pass on the calling thread (a pool of its own of one
/// thread, which ONNX Runtime runs inline): for small passes, which the shared pool's wake-ups
/// would slow down.
pub(super) fn build_inline_session(
    env: &ort::environment::Environment,
    bytes: &[u8],
    prepacked: Option<&PrepackedWeights>,
    arena: bool,
) -> Result<Session, String> {
    let builder = Session::builder(env).map_err(|e| e.to_string())?;
    let builder = builder.with_independent_thread_pool().map_err(|e| e.to_string())?;
    let builder = builder.with_intra_threads(1).map_err(|e| e.to_string())?;
    let builder = builder.with_inter_threads(1).map_err(|e| e.to_string())?;
    let builder = builder.with_intra_op_spinning(false).map_err(|e| e.to_string())?;
    finish(builder, bytes, prepacked, ExecutionProvider::Cpu, arena)
}

/// Creates a session for `model`.
pub fn create_session(env: &ort::environment::Environment, model: &LoadedModel) -> Result<Session, String> {
    create_session_from_bytes(env, &model.bytes)
}

pub(super) fn build_session(
    env: &ort::environment::Environment,
    bytes: &[u8],
    prepacked: Option<&PrepackedWeights>,
    provider: ExecutionProvider,
    arena: bool,
) -> Result<Session, String> {
    // ort's builder errors carry the builder and are not Send: turn each into text right away.
    let builder = Session::builder(env).map_err(|e| e.to_string())?;
    finish(builder, bytes, prepacked, provider, arena)
}

/// The options every session shares, and the session.
fn finish(
    builder: ort::session::builder::SessionBuilder,
    bytes: &[u8],
    prepacked: Option<&PrepackedWeights>,
    provider: ExecutionProvider,
    arena: bool,
) -> Result<Session, String> {
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
