//! A segmenter's region sums as the graph's own output: `ReduceSum(scores * mask)` over the
//! spatial axes, one value per class, where `mask` holds each class's region (the pixels it
//! predicts, or one region the caller gives for every class). The result is a `[batch, classes]`
//! output like a classifier's, so every method, metric and rule set explains a region's score
//! with the machinery that explains a class score: one-hot weights on the backward graph,
//! forward passes for the perturbation methods, the top class chosen in the graph. Standard
//! operators only.

use super::autodiff::model_opset;
use super::builder::{attribute, float_tensor, int64_tensor, value_info, Attr};
use super::proto::{data_type, ModelProto, NodeProto};

/// The output holding each class's region sum, `[batch, classes]`.
pub const REGION_OUTPUT: &str = "explaind.region_scores";

/// Where the class axis of a 4-D per-pixel output lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClassAxis {
    /// `[batch, classes, height, width]`.
    First,
    /// `[batch, height, width, classes]`.
    Last,
}

/// `model` with [`REGION_OUTPUT`]: the sum of `output` times `mask` over the spatial axes. `mask`
/// holds `classes x height x width` values laid out as one row of `output` (by `axis`).
pub fn with_region_sums(
    model: &ModelProto,
    output: &str,
    axis: ClassAxis,
    (classes, height, width): (usize, usize, usize),
    mask: &[f32],
) -> Result<ModelProto, String> {
    let expected = classes
        .checked_mul(height)
        .and_then(|n| n.checked_mul(width))
        .ok_or("the region mask's size overflows")?;
    if mask.len() != expected {
        return Err(format!(
            "a region mask of {} values for {classes} x {height} x {width}",
            mask.len()
        ));
    }
    let mut derived = model.clone();
    let opset = model_opset(model);
    let graph = derived.graph.as_mut().ok_or("the model has no graph")?;
    if !graph.node.iter().any(|n| n.output.iter().any(|o| o == output)) {
        return Err(format!("no node produces `{output}`"));
    }
    let (c, h, w) = (classes as i64, height as i64, width as i64);
    let (dims, axes) = match axis {
        ClassAxis::First => ([1, c, h, w], [2i64, 3]),
        ClassAxis::Last => ([1, h, w, c], [1i64, 2]),
    };
    let name = |s: &str| format!("explaind.region.{s}");
    graph.initializer.push(float_tensor(&name("mask"), &dims, mask));
    let masked = name("masked");
    graph
        .node
        .push(node("Mul", vec![output.to_string(), name("mask")], &masked, vec![]));
    let keepdims = ("keepdims", Attr::Int(0));
    // ReduceSum takes its axes as an input from opset 13, as an attribute before.
    let sum = if opset >= 13 {
        graph.initializer.push(int64_tensor(&name("axes"), &[2], &axes));
        node("ReduceSum", vec![masked, name("axes")], REGION_OUTPUT, vec![keepdims])
    } else {
        node(
            "ReduceSum",
            vec![masked],
            REGION_OUTPUT,
            vec![keepdims, ("axes", Attr::Ints(axes.to_vec()))],
        )
    };
    graph.node.push(sum);
    graph
        .output
        .push(value_info(REGION_OUTPUT, data_type::FLOAT, Some(&[-1, c])));
    Ok(derived)
}

fn node(op: &str, inputs: Vec<String>, out: &str, attrs: Vec<(&str, Attr)>) -> NodeProto {
    NodeProto {
        name: Some(format!("{out}.{op}")),
        op_type: Some(op.into()),
        domain: Some(String::new()),
        input: inputs,
        output: vec![out.to_string()],
        attribute: attrs.into_iter().map(|(n, v)| attribute(n, v)).collect(),
        ..Default::default()
    }
}
