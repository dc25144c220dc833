//! The rules' workbench: emits backward nodes named `{node}.grad.{what}`, adds constants, and offers
//! the pieces many rules share (shapes, reducing a broadcast gradient back to its input's shape).

use std::collections::HashMap;

use super::rules::{RuleError, RuleTable};
use super::{f32_tensor, GraphRunner, ShapeMap, TensorShape};
use crate::onnx::builder::{attribute, int64_tensor, Attr};
use crate::onnx::node::{constant, node_name, tensor_f32, tensor_i64};
use crate::onnx::proto::{data_type, GraphProto, NodeProto, TensorProto};

/// What a finished build adds to the forward graph.
pub(super) struct Emitted {
    pub nodes: Vec<NodeProto>,
    pub initializers: Vec<TensorProto>,
    /// Extra outputs requested of forward nodes: (node index, output slot, tensor name).
    pub forward_outputs: Vec<(usize, usize, String)>,
}

/// State shared by the rules while one backward graph is built.
pub struct GradContext<'a> {
    graph: &'a GraphProto,
    shapes: &'a ShapeMap,
    opset: i64,
    runner: Option<&'a dyn GraphRunner>,
    table: &'a RuleTable,
    /// Shapes of the tensors this build adds that rules read back (modified weights, copies).
    added_shapes: ShapeMap,
    /// The first linear node (Conv, Gemm, MatMul) on the path from the input, by index.
    first_linear: Option<usize>,
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    forward_outputs: Vec<(usize, usize, String)>,
    used: HashMap<String, usize>,
    shape_cache: HashMap<String, String>,
    scalar_cache: HashMap<u32, String>,
    node_index: usize,
    node: String,
}

impl<'a> GradContext<'a> {
    pub(super) fn new(
        graph: &'a GraphProto,
        shapes: &'a ShapeMap,
        opset: i64,
        runner: Option<&'a dyn GraphRunner>,
        table: &'a RuleTable,
        first_linear: Option<usize>,
    ) -> Self {
        // Initializers a graph rewrite added (folded weights) were not probed: their shapes are known.
        let added_shapes = graph
            .initializer
            .iter()
            .filter_map(|t| {
                let name = t.name.clone()?;
                (!shapes.contains_key(&name)).then(|| {
                    let shape = TensorShape {
                        dims: t.dims.iter().map(|d| Some(*d)).collect(),
                        elem_type: t.data_type.unwrap_or(data_type::FLOAT),
                    };
                    (name, shape)
                })
            })
            .collect();
        Self {
            graph,
            shapes,
            opset,
            runner,
            table,
            added_shapes,
            first_linear,
            nodes: Vec::new(),
            initializers: Vec::new(),
            forward_outputs: Vec::new(),
            used: HashMap::new(),
            shape_cache: HashMap::new(),
            scalar_cache: HashMap::new(),
            node_index: 0,
            node: String::new(),
        }
    }

    pub(super) fn begin_node(&mut self, index: usize, node: &NodeProto) {
        self.node_index = index;
        self.node = node_name(node);
    }

    pub(super) fn finish(self) -> Emitted {
        Emitted {
            nodes: self.nodes,
            initializers: self.initializers,
            forward_outputs: self.forward_outputs,
        }
    }

    /// Default-domain opset of the graph being built.
    pub fn opset(&self) -> i64 {
        self.opset
    }

    /// The build-time runner, when one was given.
    pub fn runner(&self) -> Option<&'a dyn GraphRunner> {
        self.runner
    }

    /// The rule table being applied (alternative tables read their parameters from it).
    pub fn table(&self) -> &'a RuleTable {
        self.table
    }

    /// True while the current node is the first linear layer (Conv, Gemm, MatMul) after the input.
    pub fn at_first_linear(&self) -> bool {
        self.first_linear == Some(self.node_index)
    }

    /// The forward node that produces `tensor`, if any.
    pub fn producer(&self, tensor: &str) -> Option<&'a NodeProto> {
        self.graph.node.iter().find(|n| n.output.iter().any(|o| o == tensor))
    }

    /// Emits a copy of forward node `node` (same operator and attributes) on `inputs`, with one
    /// output shaped like the node's output 0 (so rules can run on the copy).
    pub fn emit_like(&mut self, node: &NodeProto, inputs: &[&str]) -> String {
        let name = self.fresh(&format!(
            "{}.copy",
            node.op_type.as_deref().unwrap_or("op").to_ascii_lowercase()
        ));
        self.nodes.push(NodeProto {
            name: Some(name.clone()),
            op_type: node.op_type.clone(),
            domain: node.domain.clone(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![name.clone()],
            attribute: node.attribute.clone(),
            ..Default::default()
        });
        if let Some(out) = node.output.first() {
            self.alias_shape(&name, out);
        }
        name
    }

    /// Records that added tensor `name` has the shape of tensor `like`.
    pub fn alias_shape(&mut self, name: &str, like: &str) {
        let shape = self.shapes.get(like).or_else(|| self.added_shapes.get(like)).cloned();
        if let Some(shape) = shape {
            self.added_shapes.insert(name.to_string(), shape);
        }
    }

    /// A fresh name `{node}.grad.{what}`.
    pub fn fresh(&mut self, what: &str) -> String {
        let base = format!("{}.grad.{what}", self.node);
        let n = self.used.entry(base.clone()).or_insert(0);
        *n += 1;
        if *n == 1 {
            base
        } else {
            format!("{base}.{n}")
        }
    }

    /// Emits `op(inputs)` with one output and returns its name.
    pub fn emit(&mut self, op: &str, inputs: &[&str], attrs: Vec<(&str, Attr)>) -> String {
        self.emit_multi(op, inputs, 1, attrs).remove(0)
    }

    /// Emits `op(inputs)` with `outputs` outputs.
    pub fn emit_multi(&mut self, op: &str, inputs: &[&str], outputs: usize, attrs: Vec<(&str, Attr)>) -> Vec<String> {
        let what = op.to_ascii_lowercase();
        let name = self.fresh(&what);
        let outs: Vec<String> = if outputs == 1 {
            vec![name.clone()]
        } else {
            (0..outputs).map(|i| format!("{name}.{i}")).collect()
        };
        self.nodes.push(NodeProto {
            name: Some(name),
            op_type: Some(op.to_string()),
            domain: Some(String::new()),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outs.clone(),
            attribute: attrs.into_iter().map(|(n, v)| attribute(n, v)).collect(),
            ..Default::default()
        });
        outs
    }

    /// A float32 constant (rules can read its shape and values back, as the graph's own).
    pub fn const_f32(&mut self, what: &str, dims: &[i64], values: &[f32]) -> String {
        let name = self.fresh(what);
        self.initializers.push(f32_tensor(&name, dims, values));
        self.added_shapes.insert(
            name.clone(),
            TensorShape {
                dims: dims.iter().map(|d| Some(*d)).collect(),
                elem_type: data_type::FLOAT,
            },
        );
        name
    }

    /// A 1-D int64 constant.
    pub fn const_i64(&mut self, what: &str, values: &[i64]) -> String {
        let name = self.fresh(what);
        self.initializers
            .push(int64_tensor(&name, &[values.len() as i64], values));
        name
    }

    /// An int64 scalar (0-d) constant.
    pub fn scalar_i64(&mut self, what: &str, value: i64) -> String {
        let name = self.fresh(what);
        self.initializers.push(int64_tensor(&name, &[], &[value]));
        name
    }

    /// A float32 scalar constant (shared between rules).
    pub fn scalar(&mut self, value: f32) -> String {
        if let Some(n) = self.scalar_cache.get(&value.to_bits()) {
            return n.clone();
        }
        let name = format!("explaind.grad.scalar.{}", self.scalar_cache.len());
        self.initializers.push(f32_tensor(&name, &[], &[value]));
        self.scalar_cache.insert(value.to_bits(), name.clone());
        name
    }

    /// `Shape(x)`, emitted once per tensor.
    pub fn shape(&mut self, x: &str) -> String {
        if let Some(s) = self.shape_cache.get(x) {
            return s.clone();
        }
        let name = format!("{x}.shape");
        self.nodes.push(NodeProto {
            name: Some(format!("{x}.shape")),
            op_type: Some("Shape".into()),
            domain: Some(String::new()),
            input: vec![x.to_string()],
            output: vec![name.clone()],
            ..Default::default()
        });
        self.shape_cache.insert(x.to_string(), name.clone());
        name
    }

    /// Dimensions of a forward tensor as the shape probe saw them.
    pub fn dims(&self, tensor: &str) -> Result<&[Option<i64>], RuleError> {
        self.shapes
            .get(tensor)
            .or_else(|| self.added_shapes.get(tensor))
            .map(|s| s.dims.as_slice())
            .ok_or_else(|| RuleError::at(&self.node, format!("no shape known for tensor `{tensor}`")))
    }

    /// Rank of a forward tensor.
    pub fn rank(&self, tensor: &str) -> Result<usize, RuleError> {
        self.dims(tensor).map(<[_]>::len)
    }

    /// Element type of a forward tensor.
    pub fn elem_type(&self, tensor: &str) -> Option<i32> {
        self.shapes
            .get(tensor)
            .or_else(|| self.added_shapes.get(tensor))
            .map(|s| s.elem_type)
    }

    /// Values of a constant int tensor (initializer or Constant output).
    pub fn constant_ints(&self, name: &str) -> Option<Vec<i64>> {
        constant(self.graph, name).and_then(tensor_i64)
    }

    /// Values of an int tensor computed from constants and input shapes only (converters emit
    /// such subgraphs for pads and shapes: Shape, Gather, Concat, Reshape, Slice, Cast), evaluated
    /// with the build-time runner on zero inputs of the probed shape, at batch sizes 1 and 2: a
    /// value that changes with the batch is not folded. `None` when it depends on an input's
    /// values or cannot be run.
    pub fn folded_ints(&self, name: &str) -> Option<Vec<i64>> {
        if let Some(v) = self.constant_ints(name) {
            return Some(v);
        }
        let runner = self.runner?;
        let (model, feeds) = crate::onnx::fold::constant_subgraph(self.graph, name, self.opset)?;
        let mut results = Vec::new();
        for batch in [1usize, 2] {
            let mut inputs = Vec::new();
            for feed in &feeds {
                let shape = self.shapes.get(feed)?;
                if shape.elem_type != data_type::FLOAT {
                    return None;
                }
                let dims: Vec<usize> = shape
                    .dims
                    .iter()
                    .enumerate()
                    .map(|(i, d)| match d {
                        Some(d) if i > 0 => *d as usize,
                        _ => batch,
                    })
                    .collect();
                let len = dims.iter().product();
                inputs.push((feed.as_str(), dims, vec![0f32; len]));
            }
            let outputs = runner.run_f32(&model, &inputs).ok()?;
            let (_, values) = outputs.into_iter().next()?;
            results.push(values.into_iter().map(|v| v.round() as i64).collect::<Vec<_>>());
        }
        (results[0] == results[1]).then(|| results.swap_remove(0))
    }

    /// Values of a constant float tensor (the graph's, or one this build added).
    pub fn constant_floats(&self, name: &str) -> Option<Vec<f32>> {
        self.constant_tensor(name).map(|(_, v)| v)
    }

    /// Dimensions and values of a constant float tensor (the graph's, or one this build added).
    pub fn constant_tensor(&self, name: &str) -> Option<(Vec<i64>, Vec<f32>)> {
        let t = constant(self.graph, name)
            .or_else(|| self.initializers.iter().find(|t| t.name.as_deref() == Some(name)))?;
        Some((t.dims.clone(), tensor_f32(t)?))
    }

    /// Asks the current forward node for its output `slot` (e.g. MaxPool's Indices) and returns its name.
    pub fn forward_output(&mut self, node: &NodeProto, slot: usize) -> String {
        if let Some(existing) = node.output.get(slot).filter(|o| !o.is_empty()) {
            return existing.clone();
        }
        let name = format!("{}.output{slot}", self.node);
        self.forward_outputs.push((self.node_index, slot, name.clone()));
        name
    }

    /// Sums a tensor's gradient contributions once, and returns the total.
    pub(super) fn finalize_grad(
        &mut self,
        tensor: &str,
        grads: &mut HashMap<String, Vec<String>>,
        finals: &mut HashMap<String, String>,
    ) -> Option<String> {
        if let Some(f) = finals.get(tensor) {
            return Some(f.clone());
        }
        let parts = grads.remove(tensor)?;
        let total = match parts.len() {
            0 => return None,
            1 => parts[0].clone(),
            _ => {
                let name = format!("{tensor}.grad.sum");
                self.nodes.push(NodeProto {
                    name: Some(name.clone()),
                    op_type: Some("Sum".into()),
                    domain: Some(String::new()),
                    input: parts,
                    output: vec![name.clone()],
                    ..Default::default()
                });
                name
            }
        };
        finals.insert(tensor.to_string(), total.clone());
        Some(total)
    }

    /// `Reshape(g, Shape(like))`.
    pub fn reshape_like(&mut self, g: &str, like: &str) -> String {
        let s = self.shape(like);
        self.emit("Reshape", &[g, &s], vec![])
    }

    /// `ReduceSum(x, axes, keepdims)` in the input form (opset 13 and later).
    pub fn reduce_sum(&mut self, x: &str, axes: &[i64], keepdims: bool) -> String {
        let axes = self.const_i64("axes", axes);
        self.emit("ReduceSum", &[x, &axes], vec![("keepdims", Attr::Int(keepdims as i64))])
    }

    /// `ReduceMean(x, axes, keepdims)` in the form the opset wants.
    pub fn reduce_mean(&mut self, x: &str, axes: &[i64], keepdims: bool) -> String {
        if self.opset >= 18 {
            let axes = self.const_i64("axes", axes);
            self.emit(
                "ReduceMean",
                &[x, &axes],
                vec![("keepdims", Attr::Int(keepdims as i64))],
            )
        } else {
            self.emit(
                "ReduceMean",
                &[x],
                vec![
                    ("axes", Attr::Ints(axes.to_vec())),
                    ("keepdims", Attr::Int(keepdims as i64)),
                ],
            )
        }
    }

    /// `Unsqueeze(x, axes)` (input form).
    pub fn unsqueeze(&mut self, x: &str, axes: &[i64]) -> String {
        let axes = self.const_i64("axes", axes);
        self.emit("Unsqueeze", &[x, &axes], vec![])
    }

    /// `Squeeze(x, axes)` (input form).
    pub fn squeeze(&mut self, x: &str, axes: &[i64]) -> String {
        let axes = self.const_i64("axes", axes);
        self.emit("Squeeze", &[x, &axes], vec![])
    }

    /// Sums a gradient `g` (shaped like forward tensor `out`) over the axes along which `x` was
    /// broadcast to produce `out`, and reshapes it to `x`'s shape.
    pub fn unbroadcast(&mut self, g: &str, out: &str, x: &str) -> Result<String, RuleError> {
        let out_dims = self.dims(out)?.to_vec();
        let x_dims = self.dims(x)?.to_vec();
        self.unbroadcast_dims(g, &out_dims, &x_dims, x)
    }

    /// [`Self::unbroadcast`] with explicit dimensions: `g` has `g_dims`, the operand had `x_dims`
    /// (as broadcast saw it), and the result is reshaped to forward tensor `reshape_to`.
    pub fn unbroadcast_dims(
        &mut self,
        g: &str,
        g_dims: &[Option<i64>],
        x_dims: &[Option<i64>],
        reshape_to: &str,
    ) -> Result<String, RuleError> {
        if g_dims.len() < x_dims.len() {
            return Err(RuleError::at(
                &self.node,
                format!("`{reshape_to}` has more dimensions than its gradient"),
            ));
        }
        let lead = g_dims.len() - x_dims.len();
        let mut axes: Vec<i64> = (0..lead as i64).collect();
        for (j, xd) in x_dims.iter().enumerate() {
            if *xd == Some(1) && g_dims[lead + j] != Some(1) {
                axes.push((lead + j) as i64);
            }
        }
        let same_rank = self.rank(reshape_to)? == g_dims.len();
        if axes.is_empty() && same_rank {
            return Ok(g.to_string());
        }
        let summed = if axes.is_empty() {
            g.to_string()
        } else {
            self.reduce_sum(g, &axes, true)
        };
        Ok(self.reshape_like(&summed, reshape_to))
    }

    /// Converts a float32 gradient to the element type of forward tensor `like` when it differs.
    pub fn cast_like(&mut self, g: &str, like: &str) -> String {
        match self.elem_type(like) {
            Some(t) if t != crate::onnx::proto::data_type::FLOAT => {
                self.emit("Cast", &[g], vec![("to", Attr::Int(t as i64))])
            }
            _ => g.to_string(),
        }
    }
}
