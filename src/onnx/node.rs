//! Typed access to a node's attributes and to constant tensors; every error names the node and the
//! attribute, so a message points at the exact place in the model.

use super::proto::{attribute_type, data_type, AttributeProto, GraphProto, NodeProto, TensorProto};

/// A node's attribute that is missing or of the wrong type.
#[derive(Debug, Clone, thiserror::Error)]
#[error("node `{node}` ({op}): attribute `{attribute}`: {message}")]
pub struct AttrError {
    /// Node name.
    pub node: String,
    /// Operator type.
    pub op: String,
    /// Attribute name.
    pub attribute: String,
    /// What is wrong.
    pub message: String,
}

/// The display name of a node: its name, or its first output when unnamed.
pub fn node_name(node: &NodeProto) -> String {
    match node.name.as_deref() {
        Some(n) if !n.is_empty() => n.to_string(),
        _ => node.output.first().cloned().unwrap_or_else(|| "(unnamed)".into()),
    }
}

/// The operator type.
pub fn op_type(node: &NodeProto) -> &str {
    node.op_type.as_deref().unwrap_or("")
}

/// The domain, with `ai.onnx` folded into the default `""`.
pub fn domain(node: &NodeProto) -> &str {
    match node.domain.as_deref() {
        None | Some("ai.onnx") => "",
        Some(d) => d,
    }
}

fn find<'a>(node: &'a NodeProto, name: &str) -> Option<&'a AttributeProto> {
    node.attribute.iter().find(|a| a.name.as_deref() == Some(name))
}

fn err(node: &NodeProto, attribute: &str, message: impl Into<String>) -> AttrError {
    AttrError {
        node: node_name(node),
        op: op_type(node).to_string(),
        attribute: attribute.to_string(),
        message: message.into(),
    }
}

/// An integer attribute, or `default` when absent.
pub fn attr_int(node: &NodeProto, name: &str, default: i64) -> Result<i64, AttrError> {
    match find(node, name) {
        None => Ok(default),
        Some(a) if a.r#type == Some(attribute_type::INT) || a.i.is_some() => Ok(a.i.unwrap_or_default()),
        Some(_) => Err(err(node, name, "expected an integer")),
    }
}

/// An integer-list attribute, or `None` when absent.
pub fn attr_ints(node: &NodeProto, name: &str) -> Result<Option<Vec<i64>>, AttrError> {
    match find(node, name) {
        None => Ok(None),
        Some(a) if a.r#type == Some(attribute_type::INTS) || a.r#type.is_none() => Ok(Some(a.ints.clone())),
        Some(_) => Err(err(node, name, "expected a list of integers")),
    }
}

/// A float attribute, or `default` when absent.
pub fn attr_float(node: &NodeProto, name: &str, default: f32) -> Result<f32, AttrError> {
    match find(node, name) {
        None => Ok(default),
        Some(a) if a.r#type == Some(attribute_type::FLOAT) || a.f.is_some() => Ok(a.f.unwrap_or_default()),
        Some(_) => Err(err(node, name, "expected a float")),
    }
}

/// A string attribute, or `default` when absent.
pub fn attr_string(node: &NodeProto, name: &str, default: &str) -> Result<String, AttrError> {
    match find(node, name) {
        None => Ok(default.to_string()),
        Some(a) => match &a.s {
            Some(bytes) => String::from_utf8(bytes.clone()).map_err(|_| err(node, name, "not UTF-8")),
            None => Err(err(node, name, "expected a string")),
        },
    }
}

/// A tensor attribute (`Constant`'s `value`).
pub fn attr_tensor<'a>(node: &'a NodeProto, name: &str) -> Option<&'a TensorProto> {
    find(node, name).and_then(|a| a.t.as_ref())
}

/// Values of a tensor as i64 (int64, int32, int8 and uint8 tensors), in raw or typed storage.
pub fn tensor_i64(t: &TensorProto) -> Option<Vec<i64>> {
    match t.data_type? {
        data_type::INT64 => match &t.raw_data {
            Some(raw) => Some(
                raw.chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                    .collect(),
            ),
            None => Some(t.int64_data.clone()),
        },
        data_type::INT32 => match &t.raw_data {
            Some(raw) => Some(
                raw.chunks_exact(4)
                    .map(|c| i32::from_le_bytes(c.try_into().unwrap_or([0; 4])) as i64)
                    .collect(),
            ),
            None => Some(t.int32_data.iter().map(|&v| v as i64).collect()),
        },
        // Quantized weights (int8 exports); typed storage keeps them in `int32_data`.
        data_type::INT8 => match &t.raw_data {
            Some(raw) => Some(raw.iter().map(|&b| i64::from(b as i8)).collect()),
            None => Some(t.int32_data.iter().map(|&v| v as i64).collect()),
        },
        data_type::UINT8 => match &t.raw_data {
            Some(raw) => Some(raw.iter().map(|&b| i64::from(b)).collect()),
            None => Some(t.int32_data.iter().map(|&v| v as i64).collect()),
        },
        _ => None,
    }
}

/// Values of an integer tensor as float32, read straight from its storage: an int8 embedding table
/// widened to `i64` first would hold eight bytes per entry (94 MB for MiniLM's) to give four.
pub fn tensor_ints_f32(t: &TensorProto) -> Option<Vec<f32>> {
    match (t.data_type?, &t.raw_data) {
        (data_type::INT8, Some(raw)) => Some(raw.iter().map(|&b| f32::from(b as i8)).collect()),
        (data_type::UINT8, Some(raw)) => Some(raw.iter().map(|&b| f32::from(b)).collect()),
        (data_type::INT8 | data_type::UINT8, None) => Some(t.int32_data.iter().map(|&v| v as f32).collect()),
        _ => Some(tensor_i64(t)?.into_iter().map(|v| v as f32).collect()),
    }
}

/// Values of a float32 tensor, in raw or typed storage.
pub fn tensor_f32(t: &TensorProto) -> Option<Vec<f32>> {
    match t.data_type? {
        data_type::FLOAT => match &t.raw_data {
            Some(raw) => Some(
                raw.chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap_or([0; 4])))
                    .collect(),
            ),
            None => Some(t.float_data.clone()),
        },
        data_type::DOUBLE => match &t.raw_data {
            Some(raw) => Some(
                raw.chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f32)
                    .collect(),
            ),
            None => Some(t.double_data.iter().map(|&v| v as f32).collect()),
        },
        _ => None,
    }
}

/// Finds the constant tensor behind a name: an initializer or a `Constant` node's output.
pub fn constant<'a>(graph: &'a GraphProto, name: &str) -> Option<&'a TensorProto> {
    if name.is_empty() {
        return None;
    }
    graph
        .initializer
        .iter()
        .find(|t| t.name.as_deref() == Some(name))
        .or_else(|| {
            graph
                .node
                .iter()
                .find(|n| op_type(n) == "Constant" && n.output.first().map(String::as_str) == Some(name))
                .and_then(|n| attr_tensor(n, "value"))
        })
}

/// A float-list attribute, or `None` when absent.
pub fn attr_floats(node: &NodeProto, name: &str) -> Result<Option<Vec<f32>>, AttrError> {
    match find(node, name) {
        None => Ok(None),
        Some(a) if a.r#type == Some(attribute_type::FLOATS) || a.r#type.is_none() => Ok(Some(a.floats.clone())),
        Some(_) => Err(err(node, name, "expected a list of floats")),
    }
}

/// A string-list attribute, or `None` when absent.
pub fn attr_strings(node: &NodeProto, name: &str) -> Result<Option<Vec<String>>, AttrError> {
    match find(node, name) {
        None => Ok(None),
        Some(a) if a.r#type == Some(attribute_type::STRINGS) || a.r#type.is_none() => Ok(Some(
            a.strings
                .iter()
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect(),
        )),
        Some(_) => Err(err(node, name, "expected a list of strings")),
    }
}
