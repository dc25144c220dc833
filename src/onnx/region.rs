//! A segmenter's region sums as the graph's own output: `ReduceSum(scores * mask)` over the
//! spatial axes, one value per class, where `mask` is a graph input holding each class's region
//! (the pixels it predicts, or one region the caller gives for every class). The result is a
//! `[batch, classes]` output like a classifier's, so every method, metric and rule set explains a
//! region's score with the machinery that explains a class score: one-hot weights on the backward
//! graph, forward passes for the perturbation methods, the top class chosen in the graph. The
//! selection being an input, the graph (and each backward graph made from it) is built once per
//! model, and each request only feeds its mask. Standard operators only.

use super::autodiff::model_opset;
use super::builder::{attribute, int64_tensor, value_info, Attr};
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

/// The graph input holding the region mask: `[1, classes, height, width]` (or `[1, height, width,
/// classes]`, as the output lays out a row), 1 inside each class's region and 0 outside, the same
/// for every row of a pass.
pub const REGION_MASK_INPUT: &str = "explaind.region.mask";

/// `model` with [`REGION_OUTPUT`]: the sum of `output` times the mask fed as [`REGION_MASK_INPUT`]
/// over the spatial axes, `output` a `classes x height x width` grid laid out by `axis`.
pub fn with_region_sums(
    model: &ModelProto,
    output: &str,
    axis: ClassAxis,
    (classes, height, width): (usize, usize, usize),
) -> Result<ModelProto, String> {
    let too_large = || format!("a {classes} x {height} x {width} region mask is too large");
    let dim = |n: usize| i64::try_from(n).map_err(|_| too_large());
    let (c, h, w) = (dim(classes)?, dim(height)?, dim(width)?);
    c.checked_mul(h).and_then(|n| n.checked_mul(w)).ok_or_else(too_large)?;
    let mut derived = model.clone();
    let opset = model_opset(model);
    let graph = derived.graph.as_mut().ok_or("the model has no graph")?;
    if !graph.node.iter().any(|n| n.output.iter().any(|o| o == output)) {
        return Err(format!("no node produces `{output}`"));
    }
    let (dims, axes) = match axis {
        ClassAxis::First => ([1, c, h, w], [2i64, 3]),
        ClassAxis::Last => ([1, h, w, c], [1i64, 2]),
    };
    let name = |s: &str| format!("explaind.region.{s}");
    graph
        .input
        .push(value_info(REGION_MASK_INPUT, data_type::FLOAT, Some(&dims)));
    let masked = name("masked");
    graph.node.push(node(
        "Mul",
        vec![output.to_string(), REGION_MASK_INPUT.to_string()],
        &masked,
        vec![],
    ));
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
