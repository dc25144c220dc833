//! ONNX model files: protobuf types, a summary of a model's interface, and a graph builder.

pub mod autodiff;
pub mod builder;
pub mod dropout;
pub mod fold;
pub mod head;
pub mod node;
pub mod proto;
pub mod randomize;
pub mod summary;
pub mod trees;
pub mod zoo;

pub use summary::{Dim, ModelSummary, TensorInfo};
