//! Seeding a backward model with its own top prediction: the target weights are computed inside
//! the graph (`OneHot(ArgMax(scores))`) instead of fed, so explaining the top class takes one model
//! pass rather than a forward pass to choose it and a backward pass that computes the forward
//! again. The chosen class is an output, so the answer still names its target.

use super::{AutodiffError, BackwardModel, WEIGHTS_INPUT};
use crate::onnx::builder::{attribute, float_tensor, int64_tensor, value_info, Attr};
use crate::onnx::proto::{data_type, NodeProto};

/// Output holding each row's chosen class (int64, one per row).
pub const TARGET_INDEX_OUTPUT: &str = "explaind.target_index";

/// Rewrites `backward` (built with [`WEIGHTS_INPUT`] as an input) so the weights are the one-hot
/// of each row's highest score of `output`, a `[batch, classes]` tensor. Ties take the first
/// class, as the service's ranking does.
pub fn seed_with_top_prediction(
    backward: &mut BackwardModel,
    output: &str,
    classes: usize,
) -> Result<(), AutodiffError> {
    if backward.opset < 11 {
        return Err(AutodiffError::Path(format!(
            "choosing the target in the graph needs opset 11 (OneHot); the model has {}",
            backward.opset
        )));
    }
    let graph = backward
        .model
        .graph
        .as_mut()
        .ok_or_else(|| AutodiffError::Path("the backward model has no graph".into()))?;
    let producer = graph
        .node
        .iter()
        .position(|n| n.output.iter().any(|o| o == output))
        .ok_or_else(|| AutodiffError::Path(format!("no node produces `{output}`")))?;
    let before = graph.input.len();
    graph.input.retain(|i| i.name.as_deref() != Some(WEIGHTS_INPUT));
    if graph.input.len() == before {
        return Err(AutodiffError::Path(format!(
            "the backward model has no `{WEIGHTS_INPUT}` input"
        )));
    }
    let depth = "explaind.target_depth";
    let values = "explaind.target_values";
    graph.initializer.push(int64_tensor(depth, &[1], &[classes as i64]));
    graph.initializer.push(float_tensor(values, &[2], &[0.0, 1.0]));
    let node = |op: &str, inputs: &[&str], output: &str, attrs: Vec<(&str, Attr)>| NodeProto {
        name: Some(format!("{output}.{op}")),
        op_type: Some(op.into()),
        domain: Some(String::new()),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.to_string()],
        attribute: attrs.into_iter().map(|(n, v)| attribute(n, v)).collect(),
        ..Default::default()
    };
    let seed = [
        node(
            "ArgMax",
            &[output],
            TARGET_INDEX_OUTPUT,
            vec![("axis", Attr::Int(-1)), ("keepdims", Attr::Int(0))],
        ),
        node(
            "OneHot",
            &[TARGET_INDEX_OUTPUT, depth, values],
            WEIGHTS_INPUT,
            vec![("axis", Attr::Int(-1))],
        ),
    ];
    // Right after the scores exist and before any backward node reads the weights.
    graph.node.splice(producer + 1..producer + 1, seed);
    graph
        .output
        .push(value_info(TARGET_INDEX_OUTPUT, data_type::INT64, Some(&[-1])));
    Ok(())
}
