//! Which nodes lie on the differentiable path: nodes with a float output that depends on the input
//! and reaches a target. Nodes off that path (shape arithmetic, constants computed from weights)
//! need no rule.

use std::collections::{HashMap, HashSet};

use super::{is_float, ShapeMap};
use crate::onnx::node::op_type;
use crate::onnx::proto::GraphProto;

/// Operators whose outputs never carry a gradient (integer, boolean, or piecewise constant).
const NO_GRADIENT: &[&str] = &[
    "Shape",
    "Size",
    "NonZero",
    "ArgMax",
    "ArgMin",
    "Equal",
    "Less",
    "LessOrEqual",
    "Greater",
    "GreaterOrEqual",
    "Not",
    "And",
    "Or",
    "Xor",
    "IsNaN",
    "IsInf",
    "ConstantOfShape",
    "Range",
    "OneHot",
    "Floor",
    "Ceil",
    "Round",
    "Sign",
    "RandomNormalLike",
    "RandomUniformLike",
    "EyeLike",
    "BitShift",
    "Constant",
];

/// The differentiable path between an input and some targets.
#[derive(Debug, Default)]
pub struct Path {
    /// Float tensors that depend on the input.
    pub depends: HashSet<String>,
    /// Tensors some target depends on.
    pub needed: HashSet<String>,
    /// Indices of nodes on the path, in topological order.
    pub nodes: Vec<usize>,
}

impl Path {
    /// Finds the path from `input` to `targets`.
    pub fn find(graph: &GraphProto, input: &str, targets: &[String], shapes: &ShapeMap) -> Self {
        Self::from_sources(graph, std::slice::from_ref(&input.to_string()), targets, shapes)
    }

    /// Finds the path from any of `sources` to `targets`: from intermediate layers, the part of a
    /// backward pass that ends at their gradients.
    pub fn from_sources(graph: &GraphProto, sources: &[String], targets: &[String], shapes: &ShapeMap) -> Self {
        let order = topological_order(graph);
        let float_ok = |t: &str| shapes.get(t).map(|s| is_float(s.elem_type)).unwrap_or(true);
        let mut depends: HashSet<String> = sources.iter().cloned().collect();
        for &i in &order {
            let node = &graph.node[i];
            if NO_GRADIENT.contains(&op_type(node)) {
                continue;
            }
            if node.input.iter().any(|t| depends.contains(t)) {
                for o in node.output.iter().filter(|o| !o.is_empty() && float_ok(o)) {
                    depends.insert(o.clone());
                }
            }
        }
        let mut needed: HashSet<String> = targets.iter().cloned().collect();
        for &i in order.iter().rev() {
            let node = &graph.node[i];
            if node.output.iter().any(|o| needed.contains(o)) {
                needed.extend(node.input.iter().filter(|t| !t.is_empty()).cloned());
            }
        }
        let nodes = order
            .into_iter()
            .filter(|&i| {
                let node = &graph.node[i];
                !NO_GRADIENT.contains(&op_type(node))
                    && node.output.iter().any(|o| depends.contains(o) && needed.contains(o))
            })
            .collect();
        Path { depends, needed, nodes }
    }
}

/// Node indices in an order where producers come before consumers (the file's order when it is one).
pub fn topological_order(graph: &GraphProto) -> Vec<usize> {
    let mut producer: HashMap<&str, usize> = HashMap::new();
    for (i, n) in graph.node.iter().enumerate() {
        for o in &n.output {
            if !o.is_empty() {
                producer.insert(o, i);
            }
        }
    }
    let n = graph.node.len();
    let mut indegree = vec![0usize; n];
    let mut consumers: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, node) in graph.node.iter().enumerate() {
        let mut seen = HashSet::new();
        for t in &node.input {
            if let Some(&p) = producer.get(t.as_str()) {
                if p != i && seen.insert(p) {
                    indegree[i] += 1;
                    consumers[p].push(i);
                }
            }
        }
    }
    // Kahn's algorithm, always taking the lowest ready index, so a sorted file keeps its order.
    let mut ready: std::collections::BTreeSet<usize> = (0..n).filter(|&i| indegree[i] == 0).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(i) = ready.pop_first() {
        order.push(i);
        for &c in &consumers[i] {
            indegree[c] -= 1;
            if indegree[c] == 0 {
                ready.insert(c);
            }
        }
    }
    order
}
