//! ONNX model files: protobuf types, a summary of a model's interface, and a graph builder.

pub mod autodiff;
pub mod builder;
pub mod dropout;
pub mod embedding;
pub mod fold;
pub mod head;
pub mod join;
pub mod node;
pub mod objectness;
pub mod patterns;
pub mod proto;
pub mod randomize;
pub mod region;
pub mod summary;
pub mod trees;
pub mod zoo;

pub use summary::{Dim, ModelSummary, TensorInfo};

/// Float tensors' shapes by name, for the graph tools' unit tests.
#[cfg(test)]
pub(crate) fn float_shapes(entries: &[(&str, &[Option<i64>])]) -> autodiff::ShapeMap {
    entries
        .iter()
        .map(|(n, d)| {
            (
                n.to_string(),
                autodiff::TensorShape {
                    dims: d.to_vec(),
                    elem_type: proto::data_type::FLOAT,
                },
            )
        })
        .collect()
}
