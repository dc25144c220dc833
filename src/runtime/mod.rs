//! The model runtime: the ONNX Runtime library, the model registry and manifests, per-worker
//! sessions, and turning user inputs into tensors and outputs into predictions.

pub mod batching;
pub mod budget;
pub mod detect;
pub mod external;
pub mod gradients;
pub mod graph_runner;
pub mod inspect;
pub mod job;
pub mod kept;
pub mod library;
pub mod manifest;
pub mod memory;
pub mod patterns;
pub mod predict;
pub mod preprocess;
pub mod registry;
pub mod segmentation;
pub mod sessions;
pub mod shapes;
pub mod tensor;
pub mod text;

// The graph's interface, as a loaded model describes it.
pub use crate::onnx::{ModelSummary, TensorInfo};
pub use job::JobContext;
pub use registry::{LoadedModel, Registry};
pub use sessions::WorkerRuntime;
pub use tensor::Tensor;

/// Errors of the runtime layer.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The request's input does not fit the model.
    #[error(transparent)]
    Input(#[from] preprocess::InputError),
    /// No model of that name is loaded.
    #[error("no model named `{0}`")]
    UnknownModel(String),
    /// ONNX Runtime failed while running a pass.
    #[error("ONNX Runtime failed on model `{model}`: {message}")]
    Inference { model: String, message: String },
    /// No gradients for this model (an operator without a rule, or a failed build).
    #[error("model `{model}` is not differentiable: {message}")]
    NotDifferentiable { model: String, message: String },
    /// The model cannot run the passes this method needs (a graph that answers a different number
    /// of rows than it is given).
    #[error("model `{model}` cannot run this: {message}")]
    UnsupportedModel { model: String, message: String },
    /// The job was cancelled (client gone or deadline passed) between passes.
    #[error("the job was cancelled")]
    Cancelled,
}
