//! What a model exposes: inputs, outputs, opsets, producer. Read straight from the protobuf.

use serde::Serialize;
use utoipa::ToSchema;

use super::proto::{self, tensor_shape_proto::dimension::Value as DimValue, type_proto::Value as TypeValue};

/// One dimension of a tensor: a fixed size or a named symbolic size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(untagged)]
pub enum Dim {
    /// A fixed size.
    Fixed(i64),
    /// A symbolic size such as `batch`; `?` when unnamed.
    Symbolic(String),
}

impl Dim {
    /// The size when it is fixed and positive.
    pub fn fixed(&self) -> Option<usize> {
        match self {
            Dim::Fixed(n) if *n > 0 => Some(*n as usize),
            _ => None,
        }
    }
}

/// A graph input or output.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TensorInfo {
    /// Tensor name in the graph.
    pub name: String,
    /// Element type (`float32`, `int64`, ...), or `sequence` / `map` for non-tensor values.
    pub dtype: String,
    /// Shape, when the graph declares one.
    pub shape: Option<Vec<Dim>>,
}

/// A model's interface and provenance.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ModelSummary {
    /// ONNX IR version.
    pub ir_version: i64,
    /// Opset version per domain (`""` is the default ONNX domain).
    pub opsets: Vec<OpsetInfo>,
    /// Tool that wrote the model.
    pub producer: String,
    /// Graph inputs that are not initializers.
    pub inputs: Vec<TensorInfo>,
    /// Graph outputs.
    pub outputs: Vec<TensorInfo>,
    /// Number of nodes in the main graph.
    pub node_count: usize,
}

/// One imported operator set.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct OpsetInfo {
    /// Operator domain; empty for the default ONNX domain.
    pub domain: String,
    /// Opset version.
    pub version: i64,
}

impl ModelSummary {
    /// Summarises a decoded model.
    pub fn of(model: &proto::ModelProto) -> Self {
        let graph = model.graph.clone().unwrap_or_default();
        let initializers: std::collections::HashSet<&str> =
            graph.initializer.iter().filter_map(|t| t.name.as_deref()).collect();
        let inputs = graph
            .input
            .iter()
            .filter(|v| !initializers.contains(v.name.as_deref().unwrap_or_default()))
            .map(tensor_info)
            .collect();
        Self {
            ir_version: model.ir_version.unwrap_or_default(),
            opsets: model
                .opset_import
                .iter()
                .map(|o| OpsetInfo {
                    domain: o.domain.clone().unwrap_or_default(),
                    version: o.version.unwrap_or_default(),
                })
                .collect(),
            producer: format!(
                "{} {}",
                model.producer_name.as_deref().unwrap_or("unknown"),
                model.producer_version.as_deref().unwrap_or("")
            )
            .trim()
            .to_string(),
            inputs,
            outputs: graph.output.iter().map(tensor_info).collect(),
            node_count: graph.node.len(),
        }
    }

    /// The version of the default ONNX domain.
    pub fn onnx_opset(&self) -> Option<i64> {
        self.opsets
            .iter()
            .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
            .map(|o| o.version)
    }
}

fn tensor_info(v: &proto::ValueInfoProto) -> TensorInfo {
    let name = v.name.clone().unwrap_or_default();
    match v.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(TypeValue::TensorType(t)) => TensorInfo {
            name,
            dtype: proto::data_type::name(t.elem_type.unwrap_or_default()).to_string(),
            shape: t.shape.as_ref().map(|s| {
                s.dim
                    .iter()
                    .map(|d| match &d.value {
                        Some(DimValue::DimValue(n)) => Dim::Fixed(*n),
                        Some(DimValue::DimParam(p)) => Dim::Symbolic(p.clone()),
                        None => Dim::Symbolic("?".into()),
                    })
                    .collect()
            }),
        },
        Some(TypeValue::SequenceType(_)) => TensorInfo {
            name,
            dtype: "sequence".into(),
            shape: None,
        },
        Some(TypeValue::MapType(_)) => TensorInfo {
            name,
            dtype: "map".into(),
            shape: None,
        },
        _ => TensorInfo {
            name,
            dtype: "other".into(),
            shape: None,
        },
    }
}
