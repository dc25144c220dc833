//! Rewrites forward nodes whose meaning changes when the model's opset is raised (the backward
//! graph needs opset 16 or later): Softmax's axis semantics before 13, and attributes that became
//! inputs in opset 13. Inference-time Dropout becomes Identity.

use std::collections::HashSet;

use super::AutodiffError;
use crate::onnx::builder::{attribute, int64_tensor, Attr};
use crate::onnx::node::{attr_int, attr_ints, op_type};
use crate::onnx::proto::{GraphProto, NodeProto, TensorProto};

/// Upgrades `graph`'s nodes from `from` to `to` where their meaning would change.
pub(super) fn upgrade_forward(graph: &mut GraphProto, from: i64, to: i64) -> Result<(), AutodiffError> {
    let used: HashSet<String> = graph
        .node
        .iter()
        .flat_map(|n| n.input.iter().cloned())
        .chain(graph.output.iter().filter_map(|o| o.name.clone()))
        .collect();
    let graph_ref = &graph.clone();
    let mut nodes = Vec::with_capacity(graph.node.len());
    let mut initializers = Vec::new();
    for node in std::mem::take(&mut graph.node) {
        match op_type(&node) {
            "Dropout" => nodes.push(dropout_to_identity(graph_ref, &used, &node, from)?),
            "Softmax" | "LogSoftmax" | "Hardmax" if from < 13 && to >= 13 => {
                nodes.extend(normalise_in_2d(&node)?);
            }
            op @ ("Squeeze" | "Unsqueeze" | "ReduceSum" | "Split") if from < 13 && to >= 13 => {
                let attr_name = if op == "Split" { "split" } else { "axes" };
                nodes.push(attribute_to_input(&node, attr_name, &mut initializers)?);
            }
            _ => nodes.push(node),
        }
    }
    graph.node = nodes;
    graph.initializer.extend(initializers);
    Ok(())
}

/// An inference-time Dropout as an Identity carrying its ratio.
fn dropout_to_identity(
    graph: &GraphProto,
    used: &HashSet<String>,
    node: &NodeProto,
    from: i64,
) -> Result<NodeProto, AutodiffError> {
    let name = crate::onnx::node::node_name(node);
    // Inference drops nothing; a training_mode input that is not a constant false makes
    // the output random, which no explanation can describe.
    let training = node.input.get(2).filter(|t| !t.is_empty());
    if let Some(t) = training {
        let constant_false = crate::onnx::node::constant(graph, t)
            .and_then(|c| {
                c.raw_data
                    .clone()
                    .map(|r| r.iter().all(|b| *b == 0))
                    .or(Some(c.int32_data.iter().all(|v| *v == 0)))
            })
            .unwrap_or(false);
        if !constant_false {
            return Err(AutodiffError::Path(format!(
                "Dropout `{name}` runs in training mode (random output); export the model in eval mode"
            )));
        }
    }
    if node.output.iter().skip(1).any(|o| used.contains(o)) {
        return Err(AutodiffError::Path(format!(
            "Dropout `{name}`: its mask output is used"
        )));
    }
    // The ratio stays on the Identity so that MC dropout can put the layer back.
    let ratio = dropout_ratio(graph, node, from);
    Ok(NodeProto {
        name: node.name.clone(),
        op_type: Some("Identity".into()),
        domain: Some(String::new()),
        input: vec![node.input[0].clone()],
        output: vec![node.output[0].clone()],
        metadata_props: vec![crate::onnx::proto::StringStringEntryProto {
            key: Some(crate::onnx::dropout::RATIO_KEY.into()),
            value: Some(ratio.to_string()),
        }],
        ..Default::default()
    })
}

/// A Softmax, LogSoftmax or Hardmax with its meaning before opset 13: flatten to 2-D at `axis`
/// (default 1), normalise rows, reshape back.
fn normalise_in_2d(node: &NodeProto) -> Result<[NodeProto; 4], AutodiffError> {
    let name = crate::onnx::node::node_name(node);
    let axis = attr_int(node, "axis", 1).map_err(|e| AutodiffError::Path(e.to_string()))?;
    let x = node.input[0].clone();
    let y = node.output[0].clone();
    let (shape, flat, soft) = (
        format!("{name}.upgrade.shape"),
        format!("{name}.upgrade.flat"),
        format!("{name}.upgrade.2d"),
    );
    Ok([
        simple(
            "Shape",
            &format!("{name}.upgrade.shape"),
            vec![x.clone()],
            &shape,
            vec![],
        ),
        simple(
            "Flatten",
            &format!("{name}.upgrade.flatten"),
            vec![x],
            &flat,
            vec![attribute("axis", Attr::Int(axis))],
        ),
        simple(
            op_type(node),
            &name,
            vec![flat],
            &soft,
            vec![attribute("axis", Attr::Int(1))],
        ),
        simple(
            "Reshape",
            &format!("{name}.upgrade.reshape"),
            vec![soft, shape],
            &y,
            vec![],
        ),
    ])
}

/// A node whose attribute `attr_name` became input 1 in opset 13, with it moved to a constant
/// input (added to `initializers`).
fn attribute_to_input(
    node: &NodeProto,
    attr_name: &str,
    initializers: &mut Vec<TensorProto>,
) -> Result<NodeProto, AutodiffError> {
    let name = crate::onnx::node::node_name(node);
    let mut node = node.clone();
    match attr_ints(&node, attr_name).map_err(|e| AutodiffError::Path(e.to_string()))? {
        Some(values) => {
            node.attribute.retain(|a| a.name.as_deref() != Some(attr_name));
            let const_name = format!("{name}.upgrade.{attr_name}");
            initializers.push(int64_tensor(&const_name, &[values.len() as i64], &values));
            node.input.truncate(1);
            node.input.push(const_name);
        }
        None => node.input.truncate(1),
    }
    Ok(node)
}

/// A Dropout node's ratio: an attribute before opset 12, a constant input since (0.5 when absent).
fn dropout_ratio(graph: &GraphProto, node: &NodeProto, opset: i64) -> f32 {
    if opset < 12 {
        return crate::onnx::node::attr_float(node, "ratio", 0.5).unwrap_or(0.5);
    }
    node.input
        .get(1)
        .and_then(|r| crate::onnx::node::constant(graph, r))
        .and_then(crate::onnx::node::tensor_f32)
        .and_then(|v| v.first().copied())
        .unwrap_or(0.5)
}

fn simple(
    op: &str,
    name: &str,
    inputs: Vec<String>,
    output: &str,
    attribute: Vec<crate::onnx::proto::AttributeProto>,
) -> NodeProto {
    NodeProto {
        name: Some(name.to_string()),
        op_type: Some(op.to_string()),
        domain: Some(String::new()),
        input: inputs,
        output: vec![output.to_string()],
        attribute,
        ..Default::default()
    }
}
