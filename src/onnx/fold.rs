//! Folding batch normalisation into the convolution before it (zennit's `SequentialMergeBatchNorm`
//! canonizer): `BN(Conv(x, W, b))` becomes `Conv(x, W', b')` with `W' = W * k` per output channel,
//! `b' = (b - mean) * k + beta`, `k = scale / sqrt(var + epsilon)`. The map is the same (up to
//! rounding); relevance rules then see one linear layer with one bias, as LRP's rules assume.

use std::collections::HashSet;

use super::builder::{attribute, float_tensor, model_of, value_info, Attr};
use super::node::{attr_float, attr_int, constant, op_type, tensor_f32};
use super::proto::{data_type, GraphProto, ModelProto, NodeProto};

/// Nodes a constant subgraph may hold at most (a converter's shape arithmetic is a few dozen).
const MAX_CONSTANT_NODES: usize = 256;

/// A model that computes tensor `name` of `graph` (as float32, output `value`) from constants
/// and the *shapes* of graph inputs (read through Shape or Size), with the graph inputs it needs
/// fed; `None` when `name` depends on an input's values or its subgraph is too large. Converters
/// compute pads, shapes and axes this way; the caller runs the model to fold them.
pub fn constant_subgraph(graph: &GraphProto, name: &str, opset: i64) -> Option<(ModelProto, Vec<String>)> {
    let initializers: HashSet<&str> = graph.initializer.iter().filter_map(|t| t.name.as_deref()).collect();
    let inputs: HashSet<&str> = graph.input.iter().filter_map(|v| v.name.as_deref()).collect();
    let mut needed: Vec<usize> = Vec::new();
    let mut feeds: Vec<String> = Vec::new();
    let mut seen: HashSet<(String, bool)> = HashSet::new();
    // (tensor, only its shape matters)
    let mut stack = vec![(name.to_string(), false)];
    while let Some((t, shape_only)) = stack.pop() {
        if t.is_empty() || initializers.contains(t.as_str()) || !seen.insert((t.clone(), shape_only)) {
            continue;
        }
        if inputs.contains(t.as_str()) {
            if !shape_only {
                return None;
            }
            if !feeds.contains(&t) {
                feeds.push(t);
            }
            continue;
        }
        let i = graph.node.iter().position(|n| n.output.contains(&t))?;
        if !needed.contains(&i) {
            needed.push(i);
            if needed.len() > MAX_CONSTANT_NODES {
                return None;
            }
        }
        let n = &graph.node[i];
        let reads_shape = matches!(op_type(n), "Shape" | "Size");
        stack.extend(n.input.iter().map(|x| (x.clone(), shape_only || reads_shape)));
    }
    needed.sort_unstable();
    let mut nodes: Vec<NodeProto> = needed.iter().map(|&i| graph.node[i].clone()).collect();
    nodes.push(NodeProto {
        name: Some("explaind.fold.cast".into()),
        op_type: Some("Cast".into()),
        domain: Some(String::new()),
        input: vec![name.to_string()],
        output: vec!["value".into()],
        attribute: vec![attribute("to", Attr::Int(data_type::FLOAT as i64))],
        ..Default::default()
    });
    let used: HashSet<&str> = nodes.iter().flat_map(|n| n.input.iter().map(String::as_str)).collect();
    let initializer = graph
        .initializer
        .iter()
        .filter(|t| t.name.as_deref().is_some_and(|n| used.contains(n) || n == name))
        .cloned()
        .collect();
    let input = graph
        .input
        .iter()
        .filter(|v| v.name.as_ref().is_some_and(|n| feeds.contains(n)))
        .cloned()
        .collect();
    let model = model_of(
        GraphProto {
            name: Some("fold".into()),
            node: nodes,
            initializer,
            input,
            output: vec![value_info("value", data_type::FLOAT, None)],
            ..Default::default()
        },
        opset,
    );
    Some((model, feeds))
}

/// Folds every BatchNormalization (inference mode) that reads a Conv's output, where nothing else
/// reads that output and the Conv's weight, bias and the normalisation's parameters are constants.
/// Returns how many were folded.
pub fn batch_norms(graph: &mut GraphProto) -> usize {
    let mut folded = 0;
    let mut i = 0;
    while i < graph.node.len() {
        if let Some((conv, weight, bias)) = foldable(graph, i) {
            let bn = graph.node.remove(i);
            let base = format!("{}.folded", bn.name.clone().unwrap_or_else(|| bn.output[0].clone()));
            let (w_name, b_name) = (format!("{base}.weight"), format!("{base}.bias"));
            graph.initializer.push(float_tensor(&w_name, &weight.0, &weight.1));
            graph
                .initializer
                .push(float_tensor(&b_name, &[bias.len() as i64], &bias));
            let node = &mut graph.node[conv];
            node.input.truncate(1);
            node.input.push(w_name);
            node.input.push(b_name);
            node.output = vec![bn.output[0].clone()];
            folded += 1;
            continue;
        }
        i += 1;
    }
    folded
}

type Folded = (usize, (Vec<i64>, Vec<f32>), Vec<f32>);

/// The Conv before node `i` (a BatchNormalization) with its folded weight and bias, when foldable.
fn foldable(graph: &GraphProto, i: usize) -> Option<Folded> {
    let bn = &graph.node[i];
    if op_type(bn) != "BatchNormalization" || bn.output.iter().skip(1).any(|o| !o.is_empty()) {
        return None;
    }
    if attr_int(bn, "training_mode", 0).ok()? != 0 {
        return None;
    }
    let x = bn.input.first()?;
    let conv = graph
        .node
        .iter()
        .position(|n| n.output.first() == Some(x) && op_type(n) == "Conv")?;
    let readers = graph.node.iter().filter(|n| n.input.contains(x)).count();
    let is_output = graph.output.iter().any(|o| o.name.as_deref() == Some(x.as_str()));
    if readers != 1 || is_output {
        return None;
    }
    let values = |k: usize| bn.input.get(k).and_then(|n| constant(graph, n)).and_then(tensor_f32);
    let (scale, beta, mean, var) = (values(1)?, values(2)?, values(3)?, values(4)?);
    let epsilon = f64::from(attr_float(bn, "epsilon", 1e-5).ok()?);
    let c = scale.len();
    if [beta.len(), mean.len(), var.len()].iter().any(|l| *l != c) {
        return None;
    }
    let node = &graph.node[conv];
    let w = constant(graph, node.input.get(1)?)?;
    let w_values = tensor_f32(w)?;
    if w.dims.first().copied() != Some(c as i64) || w_values.is_empty() || w_values.len() % c != 0 {
        return None;
    }
    let b = match node.input.get(2).filter(|n| !n.is_empty()) {
        Some(name) => tensor_f32(constant(graph, name)?)?,
        None => vec![0.0; c],
    };
    if b.len() != c {
        return None;
    }
    let k: Vec<f64> = (0..c)
        .map(|j| f64::from(scale[j]) / (f64::from(var[j]) + epsilon).sqrt())
        .collect();
    let per = w_values.len() / c;
    let weight: Vec<f32> = w_values
        .iter()
        .enumerate()
        .map(|(idx, v)| (f64::from(*v) * k[idx / per]) as f32)
        .collect();
    let bias: Vec<f32> = (0..c)
        .map(|j| ((f64::from(b[j]) - f64::from(mean[j])) * k[j] + f64::from(beta[j])) as f32)
        .collect();
    Some((conv, (w.dims.clone(), weight), bias))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::builder::GraphBuilder;

    #[test]
    fn a_conv_and_its_batch_norm_become_one_conv() {
        let mut g = GraphBuilder::new("fold", 17);
        let x = g.input("x", &[1, 1, 3, 3]);
        let w = g.constant("w", &[2, 1, 1, 1], &[1.0, -2.0]);
        let y = g.node("Conv", &[&x, &w], vec![]);
        let scale = g.constant("scale", &[2], &[2.0, 1.0]);
        let beta = g.constant("beta", &[2], &[0.5, 0.0]);
        let mean = g.constant("mean", &[2], &[1.0, 0.0]);
        let var = g.constant("var", &[2], &[3.0, 0.0]);
        let z = g.node("BatchNormalization", &[&y, &scale, &beta, &mean, &var], vec![]);
        g.output(&z, &[1, 2, 3, 3]);
        let mut graph = g.build().graph.unwrap();
        assert_eq!(batch_norms(&mut graph), 1);
        assert_eq!(graph.node.len(), 1);
        let conv = &graph.node[0];
        assert_eq!(conv.output, vec![z]);
        let w = tensor_f32(constant(&graph, &conv.input[1]).unwrap()).unwrap();
        let b = tensor_f32(constant(&graph, &conv.input[2]).unwrap()).unwrap();
        let k0 = 2.0 / (3.0f32 + 1e-5).sqrt();
        let k1 = 1.0 / 1e-5f32.sqrt();
        assert!((w[0] - k0).abs() < 1e-5 && (w[1] + 2.0 * k1).abs() < 1e-2);
        assert!((b[0] - (-k0 + 0.5)).abs() < 1e-5 && b[1].abs() < 1e-6);
    }
}
