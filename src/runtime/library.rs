//! Finding and loading the ONNX Runtime shared library (the `load-dynamic` way), with an error that
//! says how to get it.

use std::path::{Path, PathBuf};

use ort::environment::Environment;

/// The ONNX Runtime version explaind is built and tested against.
pub const ONNXRUNTIME_VERSION: &str = "1.31.1";

/// The library could not be found or loaded.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot load the ONNX Runtime library ({tried}): {reason}.\n\
     Run `scripts/fetch-onnxruntime.sh` (it downloads ONNX Runtime {ONNXRUNTIME_VERSION} from PyPI into \
     ~/.cache/explaind), or set `onnxruntime_library` in the config / ORT_DYLIB_PATH to a libonnxruntime.so"
)]
pub struct LibraryError {
    tried: String,
    reason: String,
}

/// Where the set-up script puts the library.
pub fn cached_library_path() -> Option<PathBuf> {
    let cache = std::env::var_os("EXPLAIND_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache").join("explaind")))?;
    Some(
        cache
            .join(format!("onnxruntime-{ONNXRUNTIME_VERSION}"))
            .join("libonnxruntime.so"),
    )
}

/// The candidate paths in the order they are tried.
pub fn candidates(configured: Option<&Path>) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(p) = configured {
        out.push(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        out.push(PathBuf::from(p));
    }
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        out.push(dir.join("libonnxruntime.so"));
    }
    out.extend(cached_library_path());
    out
}

/// The process's intra-op thread pool, shared by every session.
#[derive(Debug, Clone, Copy, Default)]
pub struct Threads {
    /// Pool threads; 0 = one per core.
    pub intra_op: usize,
    /// Whether idle pool threads spin.
    pub spinning: bool,
}

impl Threads {
    /// The pool size `intra_op` stands for on this machine.
    pub fn resolved(&self) -> usize {
        match self.intra_op {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        }
    }
}

/// Loads ONNX Runtime once per process and returns the process-wide environment, with a pool of
/// one thread per core, not spinning.
pub fn init(configured: Option<&Path>) -> Result<&'static Environment, LibraryError> {
    init_with(configured, Threads::default())
}

/// [`init`] with the given thread pool. The first call in a process decides: the environment, its
/// pool included, lives as long as the process.
pub fn init_with(configured: Option<&Path>, threads: Threads) -> Result<&'static Environment, LibraryError> {
    static RESULT: std::sync::OnceLock<Result<Environment, String>> = std::sync::OnceLock::new();
    let result = RESULT.get_or_init(|| {
        let candidates = candidates(configured);
        // The first existing candidate wins; an explicitly configured path must exist.
        let path = match configured {
            Some(p) => p.to_path_buf(),
            None => candidates
                .iter()
                .find(|p| p.exists())
                .cloned()
                .ok_or_else(|| format!("tried {}: no such file", join(&candidates)))?,
        };
        let builder = ort::init_from(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        // One intra-op pool for every session: a lone pass uses every core, concurrent passes share
        // them, and no session keeps its own threads spinning after its run.
        let pool = ort::environment::GlobalThreadPoolOptions::default()
            .with_intra_threads(threads.resolved())
            .and_then(|p| p.with_inter_threads(1))
            .and_then(|p| p.with_spin_control(threads.spinning))
            .map_err(|e| format!("thread pool: {e}"))?;
        let env = builder
            .with_name("explaind")
            .with_global_thread_pool(pool)
            .build()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        tracing::info!(library = %path.display(), intra_op_threads = threads.resolved(),
            spinning = threads.spinning, "ONNX Runtime loaded");
        Ok(env)
    });
    result.as_ref().map_err(|reason| LibraryError {
        tried: join(&candidates(configured)),
        reason: reason.clone(),
    })
}

fn join(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
