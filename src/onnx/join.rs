//! Several explained inputs (issue 35 item 2): a tabular model whose graph takes two or more float
//! blocks `[batch, n_i]` (two feature groups, a vector beside a table) is explained over the union of
//! their features. The graph gets one float input [`JOINED`] `[batch, n_1 + n_2 + ...]`, split on
//! its feature axis into the original inputs, so that every method (gradients, perturbation,
//! Shapley values) sees one input whose players are all the blocks' features, and Integrated
//! Gradients' completeness holds over the blocks together.

use super::builder::{attribute, int64_tensor, value_info, Attr};
use super::proto::{data_type, ModelProto, NodeProto};
use super::summary::{ModelSummary, TensorInfo};

/// The joined input of a graph with several explained inputs.
pub const JOINED: &str = "explained_inputs";

/// One explained input's block of the joined input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    /// The original graph input.
    pub name: String,
    /// Its features: columns `start..start + len` of [`JOINED`].
    pub start: usize,
    /// How many features it takes.
    pub len: usize,
}

/// Joins graph inputs `names` (each float32 `[batch, n]` with `n` fixed, in graph order) into
/// [`JOINED`]; errors name the input at fault.
pub fn join(model: &ModelProto, names: &[String]) -> Result<(ModelProto, Vec<Block>), String> {
    let summary = ModelSummary::of(model);
    if summary.inputs.iter().any(|t| t.name == JOINED) {
        return Err(format!("the graph already has an input named `{JOINED}`"));
    }
    let ordered: Vec<&TensorInfo> = summary.inputs.iter().filter(|t| names.contains(&t.name)).collect();
    if let Some(missing) = names.iter().find(|n| !ordered.iter().any(|t| &t.name == *n)) {
        return Err(format!("no graph input `{missing}`"));
    }
    let mut blocks = Vec::new();
    let mut start = 0usize;
    for t in &ordered {
        let dims = t.shape.as_deref().unwrap_or_default();
        let len = match (t.dtype.as_str(), dims) {
            ("float32", [batch, n]) if batch.fixed().is_none() => n.fixed(),
            _ => None,
        }
        .filter(|&n| n > 0)
        .ok_or_else(|| {
            format!(
                "input `{}` cannot be joined with the other explained inputs: several explained inputs must each \
                 be float32 [batch, features] with a fixed feature count",
                t.name
            )
        })?;
        blocks.push(Block {
            name: t.name.clone(),
            start,
            len,
        });
        start = start.checked_add(len).ok_or("too many features")?;
    }
    let mut model = model.clone();
    let opset = summary.onnx_opset().unwrap_or(13);
    let graph = model.graph.as_mut().ok_or("the model has no graph")?;
    let at = graph
        .input
        .iter()
        .position(|i| blocks.iter().any(|b| Some(b.name.as_str()) == i.name.as_deref()))
        .unwrap_or(0);
    graph
        .input
        .retain(|i| !blocks.iter().any(|b| Some(b.name.as_str()) == i.name.as_deref()));
    graph.input.insert(
        at.min(graph.input.len()),
        value_info(JOINED, data_type::FLOAT, Some(&[-1, start as i64])),
    );
    let sizes: Vec<i64> = blocks.iter().map(|b| b.len as i64).collect();
    let mut split = NodeProto {
        name: Some(format!("{JOINED}.split")),
        op_type: Some("Split".into()),
        domain: Some(String::new()),
        input: vec![JOINED.into()],
        output: blocks.iter().map(|b| b.name.clone()).collect(),
        attribute: vec![attribute("axis", Attr::Int(1))],
        ..Default::default()
    };
    // Split takes its sizes as an input from opset 13, as an attribute before.
    if opset >= 13 {
        let sizes_name = format!("{JOINED}.sizes");
        graph
            .initializer
            .push(int64_tensor(&sizes_name, &[sizes.len() as i64], &sizes));
        split.input.push(sizes_name);
    } else {
        split.attribute.push(attribute("split", Attr::Ints(sizes)));
    }
    graph.node.insert(0, split);
    Ok((model, blocks))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::builder::GraphBuilder;

    #[test]
    fn blocks_follow_graph_order_and_bad_inputs_are_named() {
        let mut g = GraphBuilder::new("two", 17);
        let a = g.input("a", &[-1, 3]);
        let b = g.input("b", &[-1, 2]);
        let c = g.input("c", &[-1, -1]);
        let s = g.node("ReduceSum", &[&a], vec![]);
        let t = g.node("ReduceSum", &[&b], vec![]);
        let u = g.node("ReduceSum", &[&c], vec![]);
        let st = g.node("Add", &[&s, &t], vec![]);
        g.node("Add", &[&st, &u], vec![]);
        g.rename_last_output("y");
        g.output_any("y");
        let model = g.build();
        let (joined, blocks) = join(&model, &["b".into(), "a".into()]).unwrap();
        assert_eq!(
            blocks,
            [
                Block {
                    name: "a".into(),
                    start: 0,
                    len: 3
                },
                Block {
                    name: "b".into(),
                    start: 3,
                    len: 2
                }
            ]
        );
        let names: Vec<String> = ModelSummary::of(&joined).inputs.into_iter().map(|t| t.name).collect();
        assert_eq!(names, [JOINED, "c"]);
        let err = join(&model, &["a".into(), "c".into()]).unwrap_err();
        assert!(err.contains("input `c`"), "{err}");
        assert!(join(&model, &["a".into(), "z".into()]).unwrap_err().contains("`z`"));
    }
}
