//! Letting a backward model choose its own target: a row whose fed weights are all zero is
//! weighted by the one-hot of its highest score (1 written at `ArgMax(scores)`), computed inside
//! the graph. Explaining the top class then takes one model pass instead of a forward pass to choose it
//! and a backward pass that computes the forward again, and the same model still serves any fed
//! mix of classes. The chosen class of every row is an output, so the answer can name its target.

use super::{AutodiffError, BackwardModel, WEIGHTS_INPUT};
use crate::onnx::builder::{attribute, float_tensor, int64_tensor, value_info, Attr};
use crate::onnx::proto::{data_type, NodeProto};

/// Output holding each row's highest-scoring class (int64, one per row).
pub const TARGET_INDEX_OUTPUT: &str = "explaind.target_index";

/// Rewrites `backward` so that rows fed all-zero weights are weighted by their top prediction of
/// `output`, a `[batch, classes]` tensor. Ties take the first class, as the service's ranking does.
pub fn seed_with_top_prediction(
    backward: &mut BackwardModel,
    output: &str,
    classes: usize,
) -> Result<(), AutodiffError> {
    let (graph, producer) = seeded_graph(backward, output)?;
    let name = |s: &str| format!("explaind.top.{s}");
    let weights = name("weights");
    read_weights_from(graph, &weights);
    graph.initializer.extend(fallback_constants(&name, classes));
    let seed = seed_nodes(output, &name, &weights);
    // Right after the scores exist and before any backward node reads the weights.
    graph.node.splice(producer + 1..producer + 1, seed);
    graph
        .output
        .push(value_info(TARGET_INDEX_OUTPUT, data_type::INT64, Some(&[-1])));
    Ok(())
}

/// Rewrites `backward` so that rows fed all-zero weights are weighted by the one-hot of their
/// highest value of `output` among the positions `scores` marks (a `yolo` detector's class scores,
/// its box values left out; `scores` lays out one row of `output`, `[values, candidates]` or
/// `[candidates, values]`). That value is the best detection's score: NMS keeps the highest score,
/// and of equal ones the first position, as `ArgMax` takes it. The chosen position (in the
/// flattened row) is [`TARGET_INDEX_OUTPUT`]; the selection carries no gradient (the backward
/// graph is built before it).
pub fn seed_with_best_candidate(
    backward: &mut BackwardModel,
    output: &str,
    row: [usize; 2],
    scores: &[bool],
) -> Result<(), AutodiffError> {
    let n = row[0].checked_mul(row[1]).filter(|n| *n == scores.len() && *n > 0);
    let (Some(n), Ok(a), Ok(b)) = (n, i64::try_from(row[0]), i64::try_from(row[1])) else {
        return Err(AutodiffError::Path(format!(
            "{} score positions for a {} x {} row",
            scores.len(),
            row[0],
            row[1]
        )));
    };
    let (graph, producer) = seeded_graph(backward, output)?;
    let name = |s: &str| format!("explaind.best.{s}");
    let weights = name("weights");
    let mask: Vec<f32> = scores.iter().map(|s| f32::from(u8::from(*s))).collect();
    graph.initializer.extend([
        float_tensor(&name("mask"), &[1, a, b], &mask),
        float_tensor(&name("lowest"), &[], &[f32::MIN]),
    ]);
    graph.initializer.extend(fallback_constants(&name, n));
    let (is_score, masked, flat, fed, sum, shape) = (
        name("is_score"),
        name("masked"),
        name("flat"),
        name("fed"),
        name("sum"),
        name("shape"),
    );
    let mut seed = vec![
        node(
            "Cast",
            &[&name("mask")],
            &is_score,
            vec![("to", Attr::Int(data_type::BOOL as i64))],
        ),
        // Box values (and an objectness) never win.
        node("Where", &[&is_score, output, &name("lowest")], &masked, vec![]),
        node("Flatten", &[&masked], &flat, vec![("axis", Attr::Int(1))]),
    ];
    seed.extend(chosen_nodes(&name, &flat));
    // The weights as rows of candidates' values, as the choice indexes them.
    seed.push(node("Flatten", &[WEIGHTS_INPUT], &fed, vec![("axis", Attr::Int(1))]));
    seed.extend(fallback_nodes(&name, &fed, &sum));
    seed.extend([
        node("Shape", &[WEIGHTS_INPUT], &shape, vec![]),
        node("Reshape", &[&sum, &shape], &weights, vec![]),
    ]);
    read_weights_from(graph, &weights);
    // Right after the scores exist and before any backward node reads the weights.
    graph.node.splice(producer + 1..producer + 1, seed);
    graph
        .output
        .push(value_info(TARGET_INDEX_OUTPUT, data_type::INT64, Some(&[-1])));
    Ok(())
}

/// Makes every reader of the fed weights read `weights`, the effective ones, instead (before the
/// nodes computing them, which read the fed ones, are added).
fn read_weights_from(graph: &mut crate::onnx::proto::GraphProto, weights: &str) {
    for node in &mut graph.node {
        for input in &mut node.input {
            if input == WEIGHTS_INPUT {
                *input = weights.to_string();
            }
        }
    }
}

/// The backward graph to seed, checked for GatherElements and ScatterElements (opset 11), and
/// where `output` is produced.
fn seeded_graph<'a>(
    backward: &'a mut BackwardModel,
    output: &str,
) -> Result<(&'a mut crate::onnx::proto::GraphProto, usize), AutodiffError> {
    if backward.opset < 11 {
        return Err(AutodiffError::Path(format!(
            "choosing the target in the graph needs opset 11 (ScatterElements); the model has {}",
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
    Ok((graph, producer))
}

/// The nodes that compute the effective weights `weights` from the fed ones and each row's top
/// score of `output` (their names from `name`).
fn seed_nodes(output: &str, name: &dyn Fn(&str) -> String, weights: &str) -> Vec<NodeProto> {
    let mut nodes = chosen_nodes(name, output);
    nodes.extend(fallback_nodes(name, WEIGHTS_INPUT, weights));
    nodes
}

/// The nodes that choose each row's position of its highest value in the `[rows, n]` tensor
/// `values` (the first of equal ones): `chosen`, `[rows, 1]`, and [`TARGET_INDEX_OUTPUT`], `[rows]`.
fn chosen_nodes(name: &dyn Fn(&str) -> String, values: &str) -> Vec<NodeProto> {
    let chosen = name("chosen");
    vec![
        node(
            "ArgMax",
            &[values],
            &chosen,
            vec![("axis", Attr::Int(-1)), ("keepdims", Attr::Int(1))],
        ),
        node("Reshape", &[&chosen, &name("rows")], TARGET_INDEX_OUTPUT, vec![]),
    ]
}

/// The constants [`chosen_nodes`] and [`fallback_nodes`] read, for rows of `n` values.
fn fallback_constants(name: &dyn Fn(&str) -> String, n: usize) -> Vec<crate::onnx::proto::TensorProto> {
    vec![
        int64_tensor(&name("rows"), &[1], &[-1]),
        float_tensor(&name("ones"), &[n as i64, 1], &vec![1.0; n]),
        float_tensor(&name("zero"), &[], &[0.0]),
    ]
}

/// The nodes that give `weights`: the `[rows, n]` weights `fed`, except that a row fed no weight
/// at all (|w| sums to 0) has 1 at its row's chosen position (`chosen` of [`chosen_nodes`];
/// constants of [`fallback_constants`], named by `name`). The one value is written in place of
/// the fed 0 (a one-hot the size of the row, multiplied and added, made three more passes over
/// a detector's 134,400 values).
fn fallback_nodes(name: &dyn Fn(&str) -> String, fed: &str, weights: &str) -> Vec<NodeProto> {
    let (abs, mass, unset, unset_f, at, value) = (
        name("abs"),
        name("mass"),
        name("unset"),
        name("unset_f"),
        name("at"),
        name("value"),
    );
    let chosen = name("chosen");
    vec![
        // Rows fed no weight at all (|w| sums to 0) take 1 at the chosen position; the others keep
        // theirs (fed + 0 there).
        node("Abs", &[fed], &abs, vec![]),
        node("MatMul", &[&abs, &name("ones")], &mass, vec![]),
        node("Equal", &[&mass, &name("zero")], &unset, vec![]),
        node(
            "Cast",
            &[&unset],
            &unset_f,
            vec![("to", Attr::Int(data_type::FLOAT as i64))],
        ),
        node("GatherElements", &[fed, &chosen], &at, vec![("axis", Attr::Int(1))]),
        node("Add", &[&at, &unset_f], &value, vec![]),
        node(
            "ScatterElements",
            &[fed, &chosen, &value],
            weights,
            vec![("axis", Attr::Int(1))],
        ),
    ]
}

/// A default-domain node named after its output and operator.
fn node(op: &str, inputs: &[&str], out: &str, attrs: Vec<(&str, Attr)>) -> NodeProto {
    NodeProto {
        name: Some(format!("{out}.{op}")),
        op_type: Some(op.into()),
        domain: Some(String::new()),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![out.to_string()],
        attribute: attrs.into_iter().map(|(n, v)| attribute(n, v)).collect(),
        ..Default::default()
    }
}
