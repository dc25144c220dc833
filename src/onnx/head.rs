//! The classifier's last linear layer, found in the graph: its input is a row's embedding, its
//! output the logits whose loss gradient TracIn weighs (Pruthi et al. 2020, appendix F: for the
//! last layer, the parameter gradient of a row is the outer product of the two, so influence
//! factors into `a . a' * g . g'`).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::autodiff::ShapeMap;
use super::builder::value_info;
use super::node::{attr_int, op_type};
use super::proto::{data_type, GraphProto, ModelProto, NodeProto};

/// Operators between the linear layer and the scores that keep a row's logits as they are (or
/// turn them into probabilities: `Softmax`).
const PASS_THROUGH: &[&str] = &["Identity", "Flatten", "Reshape", "Squeeze", "Unsqueeze", "Softmax"];

/// The last linear layer and what the reference set keeps of each row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Head {
    /// The tensor whose values are a row's embedding (the linear layer's input, or the manifest's
    /// `embedding_layer`).
    pub embedding: String,
    /// Values per row of the embedding.
    pub embedding_len: usize,
    /// The linear layer whose output makes the scores, when there is one: what influence needs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub linear: Option<Linear>,
    /// Why influence cannot be computed, when `linear` is absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub no_influence: Option<String>,
}

/// A linear layer `z = a W (+ b)` whose output `z` makes the scores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Linear {
    /// Its node's name.
    pub node: String,
    /// Its input `a`, `[batch, features]`.
    pub input: String,
    /// Values per row of `a`.
    pub input_len: usize,
    /// Its output `z` (after the bias), `[batch, classes]`.
    pub logits: String,
    /// Whether it adds a bias (whose gradient adds `1` to `a . a'`).
    pub bias: bool,
    /// Whether a Softmax lies between `z` and the scores (the scores are probabilities of `z`).
    pub softmax: bool,
}

impl Head {
    /// The outputs of a reference pass through the model whose scores are `scores`: the embedding,
    /// the last layer's input and logits, and the scores, each once. Building the set and scoring
    /// a query ask for the same list, so they share one derived session.
    pub fn outputs(&self, scores: &str) -> Vec<String> {
        let mut names = vec![self.embedding.clone()];
        let last_layer = self.linear.iter().flat_map(|l| [&l.input, &l.logits]);
        for t in last_layer.chain(std::iter::once(&scores.to_string())) {
            if !names.contains(t) {
                names.push(t.clone());
            }
        }
        names
    }
}

/// Finds the head of `graph` (shapes probed) whose scores are `output`; `embedding_layer` names
/// another tensor for the embedding. An error says why no embedding can be read.
pub fn find(
    graph: &GraphProto,
    shapes: &ShapeMap,
    output: &str,
    embedding_layer: Option<&str>,
) -> Result<Head, String> {
    let producer = |t: &str| graph.node.iter().find(|n| n.output.iter().any(|o| o == t));
    let row_len = |t: &str| -> Result<usize, String> {
        let shape = shapes
            .get(t)
            .ok_or_else(|| format!("`{t}` is not a tensor of the model"))?;
        if shape.elem_type != data_type::FLOAT {
            return Err(format!("`{t}` is not a float tensor"));
        }
        if shape.dims.len() < 2 {
            return Err(format!("`{t}` has no axis besides the batch"));
        }
        shape.dims[1..]
            .iter()
            .try_fold(1usize, |n, d| d.and_then(|d| usize::try_from(d).ok()).map(|d| n * d))
            .ok_or_else(|| format!("`{t}` has a dimension that varies with the input"))
    };
    let linear = linear_head(graph, output, &producer).and_then(|mut l| {
        l.input_len = row_len(&l.input)?;
        match shapes.get(&l.input).map(|s| s.dims.len()) {
            Some(2) => Ok(l),
            _ => Err(format!(
                "the last linear layer `{}` reads `{}`, which is not [batch, features]",
                l.node, l.input
            )),
        }
    });
    let embedding = match (embedding_layer, &linear) {
        (Some(name), _) => name.to_string(),
        (None, Ok(l)) => l.input.clone(),
        (None, Err(why)) => {
            return Err(format!(
                "{why}; name the tensor that holds a row's embedding in `reference.embedding_layer`"
            ))
        }
    };
    let embedding_len = row_len(&embedding).map_err(|e| format!("reference.embedding_layer: {e}"))?;
    let (linear, no_influence) = match linear {
        Ok(l) => (Some(l), None),
        Err(why) => (None, Some(why)),
    };
    Ok(Head {
        embedding,
        embedding_len,
        linear,
        no_influence,
    })
}

/// Walks back from the scores through layers that keep the logits to a Gemm, a MatMul, or an Add
/// of a MatMul and a constant bias.
fn linear_head<'a>(
    graph: &'a GraphProto,
    output: &str,
    producer: &dyn Fn(&str) -> Option<&'a NodeProto>,
) -> Result<Linear, String> {
    let mut tensor = output.to_string();
    let mut softmax = false;
    let refuse = |what: String| Err(format!("the scores are not a linear layer's output: {what}"));
    for _ in 0..graph.node.len() + 1 {
        let Some(node) = producer(&tensor) else {
            return refuse(format!("nothing in the graph computes `{tensor}`"));
        };
        let op = op_type(node);
        match op {
            "Gemm" => {
                if attr_int(node, "transA", 0).unwrap_or(1) != 0 {
                    return refuse(format!("Gemm `{}` transposes its input", super::node::node_name(node)));
                }
                let bias = node.input.get(2).is_some_and(|b| !b.is_empty());
                return Ok(linear(node, &node.input[0], &tensor, bias, softmax));
            }
            "MatMul" => return Ok(linear(node, &node.input[0], &tensor, false, softmax)),
            "Add" => {
                let mm = node
                    .input
                    .iter()
                    .enumerate()
                    .find_map(|(k, t)| producer(t).filter(|p| op_type(p) == "MatMul").map(|p| (k, p)));
                let Some((k, mm)) = mm else {
                    return refuse(format!(
                        "Add `{}` adds no MatMul's output",
                        super::node::node_name(node)
                    ));
                };
                let other = &node.input[1 - k.min(1)];
                if !is_constant(graph, other) {
                    return refuse(format!(
                        "Add `{}` adds a computed tensor, not a bias",
                        super::node::node_name(node)
                    ));
                }
                return Ok(linear(mm, &mm.input[0], &tensor, true, softmax));
            }
            _ if PASS_THROUGH.contains(&op) => {
                softmax |= op == "Softmax";
                tensor = node.input.first().cloned().unwrap_or_default();
            }
            _ => return refuse(format!("`{tensor}` is made by {op}")),
        }
    }
    refuse("the graph has a cycle".into())
}

fn linear(node: &NodeProto, input: &str, logits: &str, bias: bool, softmax: bool) -> Linear {
    Linear {
        node: super::node::node_name(node),
        input: input.to_string(),
        input_len: 0,
        logits: logits.to_string(),
        bias,
        softmax,
    }
}

fn is_constant(graph: &GraphProto, name: &str) -> bool {
    graph.initializer.iter().any(|t| t.name.as_deref() == Some(name))
        || graph
            .node
            .iter()
            .any(|n| op_type(n) == "Constant" && n.output.iter().any(|o| o == name))
}

/// `model` with `names` added to its graph outputs (float tensors), those already there kept once.
pub fn with_outputs(model: &ModelProto, names: &[String]) -> Result<ModelProto, String> {
    let mut out = model.clone();
    let graph = out.graph.as_mut().ok_or("the model has no graph")?;
    for name in names {
        if graph.output.iter().any(|o| o.name.as_deref() == Some(name.as_str())) {
            continue;
        }
        let made = graph.node.iter().any(|n| n.output.contains(name))
            || graph.input.iter().any(|i| i.name.as_deref() == Some(name.as_str()));
        if !made {
            return Err(format!("`{name}` is not a tensor of the model"));
        }
        graph.output.push(value_info(name, data_type::FLOAT, None));
    }
    Ok(out)
}

/// The model cut down to what computes `names`: they are its only outputs, and the nodes they do
/// not depend on (the layers after the deepest, the head) are gone, so a pass that needs only
/// these tensors stops at the deepest of them. Inputs and initializers stay as they are (ONNX
/// Runtime drops the initializers no node reads).
pub fn to_outputs(model: &ModelProto, names: &[String]) -> Result<ModelProto, String> {
    let mut out = model.clone();
    let graph = out.graph.as_mut().ok_or("the model has no graph")?;
    for name in names {
        let made = graph.node.iter().any(|n| n.output.contains(name))
            || graph.input.iter().any(|i| i.name.as_deref() == Some(name.as_str()));
        if !made {
            return Err(format!("`{name}` is not a tensor of the model"));
        }
    }
    // Backwards through the nodes (a valid graph lists a node after those it reads): keep a node
    // when a kept tensor is one of its outputs, then need what it reads, its subgraphs' outer
    // names included.
    let mut needed: std::collections::HashSet<String> = names.iter().cloned().collect();
    let mut keep = vec![false; graph.node.len()];
    for (i, node) in graph.node.iter().enumerate().rev() {
        if node.output.iter().any(|o| needed.contains(o)) {
            keep[i] = true;
            needed.extend(node.input.iter().filter(|n| !n.is_empty()).cloned());
            for a in &node.attribute {
                for g in a.g.as_deref().into_iter().chain(&a.graphs) {
                    read_by(g, &mut needed);
                }
            }
        }
    }
    let mut kept = keep.iter();
    graph.node.retain(|_| kept.next().copied().unwrap_or(false));
    graph.output = names.iter().map(|n| value_info(n, data_type::FLOAT, None)).collect();
    Ok(out)
}

/// Every tensor name the nodes of `graph` and its subgraphs read (a subgraph may read its outer
/// graphs' tensors by name).
fn read_by(graph: &GraphProto, names: &mut std::collections::HashSet<String>) {
    for node in &graph.node {
        names.extend(node.input.iter().filter(|n| !n.is_empty()).cloned());
        for a in &node.attribute {
            for g in a.g.as_deref().into_iter().chain(&a.graphs) {
                read_by(g, names);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::builder::{Attr, GraphBuilder};

    #[test]
    fn a_gemm_with_bias_before_softmax_is_the_head() {
        let mut b = GraphBuilder::new("mlp", 17);
        b.input("x", &[-1, 4]);
        let w = b.constant("w", &[4, 3], &[0.1; 12]);
        let c = b.constant("c", &[3], &[0.0; 3]);
        let h = b.node("Relu", &["x"], vec![]);
        let z = b.node("Gemm", &[&h, &w, &c], vec![("alpha", Attr::Float(1.0))]);
        let p = b.node("Softmax", &[&z], vec![("axis", Attr::Int(-1))]);
        b.output(&p, &[-1, 3]);
        let model = b.build();
        let graph = model.graph.as_ref().unwrap();
        let shapes =
            crate::onnx::float_shapes(&[("x", &[None, Some(4)]), (&h, &[None, Some(4)]), (&z, &[None, Some(3)])]);
        let head = find(graph, &shapes, &p, None).unwrap();
        let l = head.linear.as_ref().unwrap();
        assert_eq!(
            (l.input.as_str(), l.logits.as_str(), l.bias, l.softmax),
            (h.as_str(), z.as_str(), true, true)
        );
        assert_eq!(head.embedding, h);
        assert_eq!(head.embedding_len, 4);
        assert_eq!(head.outputs(&p), vec![h.clone(), z.clone(), p.clone()]);
        // Logits that are the scores are asked for once.
        assert_eq!(head.outputs(&z), vec![h.clone(), z.clone()]);
    }

    #[test]
    fn a_graph_cut_to_a_layer_outputs_it_alone_and_stops_there() {
        let mut b = GraphBuilder::new("mlp", 17);
        b.input("x", &[-1, 4]);
        let w = b.constant("w", &[4, 3], &[0.1; 12]);
        let h = b.node("Relu", &["x"], vec![]);
        let z = b.node("MatMul", &[&h, &w], vec![]);
        let p = b.node("Softmax", &[&z], vec![("axis", Attr::Int(-1))]);
        b.output(&p, &[-1, 3]);
        let model = b.build();
        let cut = to_outputs(&model, std::slice::from_ref(&h)).unwrap();
        let graph = cut.graph.as_ref().unwrap();
        let outputs: Vec<_> = graph.output.iter().map(|o| o.name.clone().unwrap()).collect();
        assert_eq!(outputs, vec![h.clone()]);
        assert_eq!(graph.node.len(), 1);
        let cut = to_outputs(&model, &[h.clone(), z.clone()]).unwrap();
        assert_eq!(cut.graph.as_ref().unwrap().node.len(), 2);
        assert!(to_outputs(&model, &["nowhere".to_string()]).is_err());
    }

    #[test]
    fn matmul_then_add_is_a_linear_layer_with_bias_and_a_sigmoid_is_not() {
        let mut b = GraphBuilder::new("mm", 17);
        b.input("x", &[-1, 4]);
        let w = b.constant("w", &[4, 2], &[0.1; 8]);
        let c = b.constant("c", &[2], &[0.0; 2]);
        let m = b.node("MatMul", &["x", &w], vec![]);
        let z = b.node("Add", &[&m, &c], vec![]);
        let s = b.node("Sigmoid", &[&z], vec![]);
        b.output(&z, &[-1, 2]);
        b.output(&s, &[-1, 2]);
        let model = b.build();
        let graph = model.graph.as_ref().unwrap();
        let shapes =
            crate::onnx::float_shapes(&[("x", &[None, Some(4)]), (&m, &[None, Some(2)]), (&z, &[None, Some(2)])]);
        let head = find(graph, &shapes, &z, None).unwrap();
        let l = head.linear.unwrap();
        assert_eq!((l.input.as_str(), l.bias, l.softmax), ("x", true, false));
        let err = find(graph, &shapes, &s, None).unwrap_err();
        assert!(err.contains("Sigmoid") && err.contains("embedding_layer"), "{err}");
        // A named embedding still serves similarity; influence says why it cannot run.
        let named = find(graph, &shapes, &s, Some("x")).unwrap();
        assert!(named.linear.is_none() && named.no_influence.unwrap().contains("Sigmoid"));
    }
}
