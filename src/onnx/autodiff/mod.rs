//! Gradients for plain inference models: turns an ONNX graph into one that also computes the
//! backward pass, from standard ONNX operators only, so stock ONNX Runtime runs it.
//!
//! The target is `sum(output * weights)`, with `weights` an extra graph input shaped like the
//! output: one built model serves any class, any mix of classes, per batch row. The built model
//! outputs, besides the original outputs, the gradient of the target w.r.t. the model input and,
//! on request, named intermediate tensors with their gradients (Grad-CAM and friends).
//!
//! Rules live one operator family per file under `rules/`, registered in a [`RuleTable`] by
//! (domain, operator). Before building, every node on the differentiable path (float tensors that
//! depend on the input and reach the target) is checked, and a model with unsupported operators is
//! refused once, with the full list.

pub mod analysis;
mod context;
pub mod rules;
mod top;
mod upgrade;

use std::collections::{HashMap, HashSet};

pub use context::GradContext;
pub use rules::{RuleError, RuleSet, RuleTable};
pub use top::{seed_with_top_prediction, TARGET_INDEX_OUTPUT};

use super::builder::value_info;
use super::node::{attr_ints, domain, node_name, op_type};
use super::proto::{data_type, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto};

/// Name of the extra graph input holding the target weights (shaped like the target output).
pub const WEIGHTS_INPUT: &str = "explaind.target_weights";

/// Known shape and element type of a tensor; `None` dims vary with the batch (or are unknown).
#[derive(Debug, Clone, PartialEq)]
pub struct TensorShape {
    /// Dimensions.
    pub dims: Vec<Option<i64>>,
    /// ONNX element type (`data_type::FLOAT`, ...).
    pub elem_type: i32,
}

/// Shapes of the graph's tensors, by name, as a shape probe found them.
pub type ShapeMap = HashMap<String, TensorShape>;

/// A dense float tensor: shape and row-major values.
pub type Dense = (Vec<usize>, Vec<f32>);

/// Runs a small ONNX model at build time (used to derive constant matrices such as Resize's).
pub trait GraphRunner {
    /// Runs `model` on named float inputs and returns every output.
    fn run_f32(&self, model: &ModelProto, inputs: &[(&str, Vec<usize>, Vec<f32>)]) -> Result<Vec<Dense>, String>;
}

/// What to differentiate.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GradientSpec {
    /// The model input to differentiate with respect to.
    pub input: String,
    /// The output whose weighted sum is the target.
    pub output: String,
    /// Intermediate tensors to expose, with their gradients.
    pub layers: Vec<String>,
}

/// A built backward model and the names of what it outputs.
#[derive(Debug, Clone)]
pub struct BackwardModel {
    /// The model: the forward graph plus the backward pass.
    pub model: ModelProto,
    /// Gradient of the target w.r.t. the input.
    pub input_grad: String,
    /// For each requested layer: (activation output, gradient output).
    pub layers: Vec<(String, String)>,
    /// Default-domain opset of the built model.
    pub opset: i64,
}

/// An operator on the differentiable path that has no rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsupported {
    /// Operator domain (`""` for ONNX).
    pub domain: String,
    /// Operator type.
    pub op: String,
    /// Opset of that domain in the model.
    pub opset: i64,
    /// Names of the nodes using it.
    pub nodes: Vec<String>,
}

impl std::fmt::Display for Unsupported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let domain = if self.domain.is_empty() {
            "ai.onnx"
        } else {
            &self.domain
        };
        write!(
            f,
            "{domain}::{} (opset {}) at {}",
            self.op,
            self.opset,
            self.nodes.join(", ")
        )
    }
}

/// Why no backward model could be built.
#[derive(Debug, thiserror::Error)]
pub enum AutodiffError {
    #[error("the model has no graph")]
    NoGraph,
    #[error(
        "opset {0} is older than 11, the oldest explaind differentiates; convert the model with onnx.version_converter"
    )]
    OldOpset(i64),
    #[error("no gradient rule for: {}", .0.iter().map(|u| u.to_string()).collect::<Vec<_>>().join("; "))]
    Unsupported(Vec<Unsupported>),
    #[error("{0}")]
    Path(String),
    #[error(transparent)]
    Rule(#[from] RuleError),
}

/// Default-domain opset of a model.
pub fn model_opset(model: &ModelProto) -> i64 {
    model
        .opset_import
        .iter()
        .find(|o| matches!(o.domain.as_deref(), None | Some("") | Some("ai.onnx")))
        .and_then(|o| o.version)
        .unwrap_or(1)
}

/// The differentiable path's operators that `table` has no rule for (empty: differentiable).
pub fn unsupported_ops(
    model: &ModelProto,
    spec: &GradientSpec,
    shapes: &ShapeMap,
    table: &RuleTable,
) -> Result<Vec<Unsupported>, AutodiffError> {
    let graph = model.graph.as_ref().ok_or(AutodiffError::NoGraph)?;
    let path = analysis::Path::find(graph, &spec.input, std::slice::from_ref(&spec.output), shapes);
    Ok(collect_unsupported(model, graph, &path, table))
}

fn collect_unsupported(
    model: &ModelProto,
    graph: &GraphProto,
    path: &analysis::Path,
    table: &RuleTable,
) -> Vec<Unsupported> {
    let mut found: Vec<Unsupported> = Vec::new();
    for &i in &path.nodes {
        let node = &graph.node[i];
        if table.get(domain(node), op_type(node)).is_some() {
            continue;
        }
        let d = domain(node).to_string();
        let opset = model
            .opset_import
            .iter()
            .find(|o| {
                let od = o.domain.as_deref().unwrap_or("");
                od == d || (d.is_empty() && od == "ai.onnx")
            })
            .and_then(|o| o.version)
            .unwrap_or(0);
        match found.iter_mut().find(|u| u.domain == d && u.op == op_type(node)) {
            Some(u) => u.nodes.push(node_name(node)),
            None => found.push(Unsupported {
                domain: d,
                op: op_type(node).to_string(),
                opset,
                nodes: vec![node_name(node)],
            }),
        }
    }
    found
}

/// The forward model at the opset the backward graph needs (16 or the model's own, if later), with
/// the nodes whose meaning would change rewritten. Probe shapes on this model, then build on it.
pub fn prepare_forward(model: &ModelProto) -> Result<ModelProto, AutodiffError> {
    let source_opset = model_opset(model);
    if source_opset < 11 {
        return Err(AutodiffError::OldOpset(source_opset));
    }
    // Scatter with reduction="add" (MaxPool, Gather gradients) needs opset 16.
    let opset = source_opset.max(16);
    let mut graph = model.graph.clone().ok_or(AutodiffError::NoGraph)?;
    upgrade::upgrade_forward(&mut graph, source_opset, opset)?;
    let mut prepared = model.clone();
    prepared.graph = Some(graph);
    prepared.ir_version = Some(prepared.ir_version.unwrap_or(8).max(8));
    set_default_opset(&mut prepared, opset);
    Ok(prepared)
}

/// A layer whose activations and gradients a method can read (the CAM methods do), and the axis
/// of its channels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureLayer {
    pub name: String,
    /// 1 for channels-first (NCHW) feature maps, 3 for channels-last (NHWC), 2 for a transformer's
    /// token sequence `[batch, tokens, dim]`.
    pub channel_axis: usize,
    /// For a token sequence: how its tokens lie on the image.
    pub grid: Option<TokenGrid>,
}

/// How a vision transformer's tokens `[batch, skip + height * width, dim]` lie on the image: the
/// first `skip` (the class token, a distillation token) are not patches; the rest are the patch
/// grid row by row (pytorch-grad-cam's `reshape_transform`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct TokenGrid {
    /// Leading tokens that are not patches.
    pub skip: usize,
    /// Patch rows.
    pub height: usize,
    /// Patch columns.
    pub width: usize,
}

/// Candidate layers to read (as the CAM methods do): float 4-D feature maps on the path from `input` to `output`
/// whose spatial size is above 1, in graph order, each with its channel axis. A tensor is a
/// feature map when its layout is known from how it was made: the output of an operator ONNX
/// defines on NCHW (Conv, pooling, normalisation), a Transpose between the two layouts of one
/// (converted channels-last graphs transpose around every convolution), or elementwise from one.
pub fn analysis_layers(model: &ModelProto, input: &str, output: &str, shapes: &ShapeMap) -> Vec<FeatureLayer> {
    let Some(graph) = model.graph.as_ref() else {
        return Vec::new();
    };
    let path = analysis::Path::find(graph, input, &[output.to_string()], shapes);
    let mut layers = Vec::new();
    for &i in &path.nodes {
        for o in &graph.node[i].output {
            if !(path.depends.contains(o) && path.needed.contains(o)) {
                continue;
            }
            let Some(s) = shapes.get(o) else { continue };
            if s.dims.len() != 4 || !is_float(s.elem_type) {
                continue;
            }
            let Some(channel_axis) = channel_axis(graph, o, shapes, 0) else {
                continue;
            };
            let spatial: Option<i64> = if channel_axis == 1 {
                s.dims[2].zip(s.dims[3]).map(|(h, w)| h * w)
            } else {
                s.dims[1].zip(s.dims[2]).map(|(h, w)| h * w)
            };
            if spatial.is_some_and(|p| p > 1) {
                layers.push(FeatureLayer {
                    name: o.clone(),
                    channel_axis,
                    grid: None,
                });
            }
        }
    }
    layers.extend(last_attention_tokens(graph, input, &path, shapes));
    layers
}

/// Attention probabilities on the path from `input` to `output`: the outputs of Softmax nodes
/// shaped `[batch, heads, tokens, tokens]`, in graph order (attention rollout reads them).
pub fn attention_maps(model: &ModelProto, input: &str, output: &str, shapes: &ShapeMap) -> Vec<String> {
    let Some(graph) = model.graph.as_ref() else {
        return Vec::new();
    };
    let path = analysis::Path::find(graph, input, &[output.to_string()], shapes);
    path.nodes
        .iter()
        .filter_map(|&i| attention_probabilities(&graph.node[i], shapes))
        .cloned()
        .collect()
}

/// The output of `n` when it is self-attention's probabilities: a Softmax shaped
/// `[batch, heads, tokens, tokens]`.
fn attention_probabilities<'n>(n: &'n NodeProto, shapes: &ShapeMap) -> Option<&'n String> {
    let o = n.output.first().filter(|_| op_type(n) == "Softmax")?;
    let dims = &shapes.get(o)?.dims;
    (dims.len() == 4 && dims[2].is_some() && dims[2] == dims[3]).then_some(o)
}

/// The token sequence the last self-attention reads (its queries' and keys' latest common source
/// `[batch, tokens, dim]`: the last block's input, or its first normalisation in pre-norm blocks),
/// when its tokens lie on the input image as a patch grid. Later token tensors only reach the
/// scores through the class token, so their patch tokens have no gradient; this is the layer
/// pytorch-grad-cam's ViT recipe uses.
fn last_attention_tokens(
    graph: &GraphProto,
    input: &str,
    path: &analysis::Path,
    shapes: &ShapeMap,
) -> Option<FeatureLayer> {
    let dims = |t: &str| shapes.get(t).map(|s| s.dims.clone());
    // The image's height and width, channels-first or channels-last.
    let image = dims(input)?;
    let (h, w) = match image.as_slice() {
        [_, Some(3 | 1), Some(h), Some(w)] => (*h, *w),
        [_, Some(h), Some(w), Some(3 | 1)] => (*h, *w),
        _ => return None,
    };
    let softmax = path
        .nodes
        .iter()
        .rev()
        .map(|&i| &graph.node[i])
        .find(|n| attention_probabilities(n, shapes).is_some())?;
    let tokens = dims(&softmax.output[0])?[2]?;
    // The scores' MatMul of queries and transposed keys, under any scaling.
    let producer = |t: &str| graph.node.iter().position(|n| n.output.iter().any(|o| o == t));
    let mut scores = producer(&softmax.input[0])?;
    while matches!(op_type(&graph.node[scores]), "Div" | "Mul" | "Add" | "Sub") {
        scores = producer(&graph.node[scores].input[0])?;
    }
    let matmul = &graph.node[scores];
    if op_type(matmul) != "MatMul" {
        return None;
    }
    let ancestors = |t: &str| {
        let mut seen: HashSet<String> = HashSet::new();
        let mut stack = vec![t.to_string()];
        while let Some(t) = stack.pop() {
            if !seen.insert(t.clone()) {
                continue;
            }
            if let Some(i) = producer(&t) {
                stack.extend(
                    graph.node[i]
                        .input
                        .iter()
                        .filter(|i| path.depends.contains(*i))
                        .cloned(),
                );
            }
        }
        seen
    };
    let (queries, keys) = (ancestors(&matmul.input[0]), ancestors(&matmul.input[1]));
    // The latest common source in graph order with a token axis of the attention's size.
    let source = path
        .nodes
        .iter()
        .rev()
        .flat_map(|&i| graph.node[i].output.iter())
        .find(|o| {
            queries.contains(*o)
                && keys.contains(*o)
                && dims(o).is_some_and(|d| d.len() == 3 && d[1] == Some(tokens) && d[2].is_some())
        })?;
    let grid = [1, 0, 2].into_iter().find_map(|skip| {
        let patches = tokens - skip;
        // Rows and columns in the image's proportions.
        (1..=patches).find_map(|rows| {
            let cols = patches / rows;
            (rows * cols == patches && rows * w == cols * h && rows > 1).then_some(TokenGrid {
                skip: skip as usize,
                height: rows as usize,
                width: cols as usize,
            })
        })
    })?;
    Some(FeatureLayer {
        name: source.clone(),
        channel_axis: 2,
        grid: Some(grid),
    })
}

/// The channel axis of 4-D tensor `t` (1: NCHW, 3: NHWC) when its producers tell it, else `None`.
fn channel_axis(graph: &GraphProto, t: &str, shapes: &ShapeMap, depth: usize) -> Option<usize> {
    if depth >= 64 {
        return None;
    }
    let n = graph
        .node
        .iter()
        .find(|n| n.output.first().map(String::as_str) == Some(t))?;
    let from_input = |i: &String| {
        shapes
            .get(i)
            .is_some_and(|s| s.dims.len() == 4)
            .then(|| channel_axis(graph, i, shapes, depth + 1))
            .flatten()
    };
    match op_type(n) {
        "Conv"
        | "ConvTranspose"
        | "MaxPool"
        | "AveragePool"
        | "LpPool"
        | "BatchNormalization"
        | "InstanceNormalization" => Some(1),
        "Transpose" => {
            let perm = attr_ints(n, "perm").ok().flatten()?;
            match (n.input.first().and_then(from_input), perm.as_slice()) {
                (Some(1), [0, 2, 3, 1]) => Some(3),
                (Some(3), [0, 3, 1, 2]) => Some(1),
                _ => None,
            }
        }
        "Relu" | "LeakyRelu" | "PRelu" | "Elu" | "Selu" | "Sigmoid" | "Tanh" | "Clip" | "HardSigmoid" | "HardSwish"
        | "Softplus" | "Gelu" | "Identity" | "Dropout" | "Cast" | "Add" | "Sub" | "Mul" | "Div" | "Max" | "Min"
        | "Sum" => n.input.iter().find_map(from_input),
        _ => None,
    }
}

/// Builds the backward model for `spec` with the rules of `table`. `model` should come from
/// [`prepare_forward`] and `shapes` from probing it.
pub fn build_backward(
    model: &ModelProto,
    spec: &GradientSpec,
    shapes: &ShapeMap,
    table: &RuleTable,
    runner: Option<&dyn GraphRunner>,
) -> Result<BackwardModel, AutodiffError> {
    build(model, spec, shapes, table, runner, None)
}

/// Every reason the build of [`build_backward`] would stop for: operators without a rule, then
/// each node whose rule refuses its attributes, inputs or shapes (a Pad mode, a dynamic size),
/// found by running every rule as the build does and carrying on past refusals. Empty: the
/// build succeeds. The model report shows this list, so no request meets a refusal the report
/// did not show.
pub fn refusals(
    model: &ModelProto,
    spec: &GradientSpec,
    shapes: &ShapeMap,
    table: &RuleTable,
    runner: Option<&dyn GraphRunner>,
) -> Vec<String> {
    let mut found = Vec::new();
    if let Err(e) = build(model, spec, shapes, table, runner, Some(&mut found)) {
        found.push(e.to_string());
    }
    found
}

fn build(
    model: &ModelProto,
    spec: &GradientSpec,
    shapes: &ShapeMap,
    table: &RuleTable,
    runner: Option<&dyn GraphRunner>,
    mut refused: Option<&mut Vec<String>>,
) -> Result<BackwardModel, AutodiffError> {
    let prepared = prepare_forward(model)?;
    let model = &prepared;
    let opset = model_opset(model);
    let mut graph = model.graph.clone().ok_or(AutodiffError::NoGraph)?;
    if table.propagates_relevance() {
        // zennit's canonizer: relevance rules apply to the convolution with its normalisation in it.
        super::fold::batch_norms(&mut graph);
    }

    let mut targets = vec![spec.output.clone()];
    targets.extend(spec.layers.iter().cloned());
    let path = analysis::Path::find(&graph, &spec.input, std::slice::from_ref(&spec.output), shapes);
    if !path.depends.contains(&spec.output) {
        return Err(AutodiffError::Path(format!(
            "output `{}` does not depend on input `{}` through float tensors",
            spec.output, spec.input
        )));
    }
    for layer in &spec.layers {
        if !(path.depends.contains(layer) && path.needed.contains(layer)) {
            return Err(AutodiffError::Path(format!(
                "layer `{layer}` is not a float tensor between input `{}` and output `{}`",
                spec.input, spec.output
            )));
        }
    }
    let unsupported = collect_unsupported(model, &graph, &path, table);
    match refused.as_deref_mut() {
        _ if unsupported.is_empty() => {}
        Some(list) => list.extend(unsupported.iter().map(|u| format!("no gradient rule for {u}"))),
        None => return Err(AutodiffError::Unsupported(unsupported)),
    }

    let first_linear = path
        .nodes
        .iter()
        .copied()
        .find(|&i| matches!(op_type(&graph.node[i]), "Conv" | "Gemm" | "MatMul"));
    let mut ctx = GradContext::new(&graph, shapes, opset, runner, table, first_linear);
    let seed = if table.propagates_relevance() {
        // Relevance starts as the target's score: the output times the weights.
        ctx.emit("Mul", &[&spec.output, WEIGHTS_INPUT], vec![])
    } else {
        WEIGHTS_INPUT.to_string()
    };
    let mut grads: HashMap<String, Vec<String>> = HashMap::new();
    grads.insert(spec.output.clone(), vec![seed]);
    let mut finals: HashMap<String, String> = HashMap::new();

    for &index in path.nodes.iter().rev() {
        let node = graph.node[index].clone();
        let out_grads: Vec<Option<String>> = node
            .output
            .iter()
            .map(|o| ctx.finalize_grad(o, &mut grads, &mut finals))
            .collect();
        if out_grads.iter().all(Option::is_none) {
            continue;
        }
        let needs: Vec<bool> = node
            .input
            .iter()
            .map(|i| !i.is_empty() && path.depends.contains(i))
            .collect();
        if !needs.iter().any(|n| *n) {
            continue;
        }
        ctx.begin_node(index, &node);
        let rule = table.get(domain(&node), op_type(&node));
        let outcome = match rule {
            Some(rule) => rule(&mut ctx, &node, &out_grads, &needs),
            None => Err(RuleError::new(&node, "no gradient rule")),
        };
        let in_grads = match (outcome, refused.as_deref_mut()) {
            (Ok(g), _) => g,
            (Err(e), None) => return Err(e.into()),
            // Listing refusals: note it (an operator without a rule is listed already, with the
            // unsupported operators) and carry on as if each input's gradient were itself.
            (Err(e), Some(list)) => {
                if rule.is_some() {
                    list.push(e.to_string());
                }
                node.input.iter().map(|i| Some(i.clone())).collect()
            }
        };
        for (i, input) in node.input.iter().enumerate() {
            if !needs[i] {
                continue;
            }
            match in_grads.get(i).cloned().flatten() {
                Some(g) => grads.entry(input.clone()).or_default().push(g),
                None => {
                    let e = RuleError::new(&node, format!("the rule gave no gradient for input {i} (`{input}`)"));
                    match refused.as_deref_mut() {
                        Some(list) => list.push(e.to_string()),
                        None => return Err(e.into()),
                    }
                }
            }
        }
    }

    let input_grad_value = ctx
        .finalize_grad(&spec.input, &mut grads, &mut finals)
        .ok_or_else(|| AutodiffError::Path(format!("no gradient reached input `{}`", spec.input)))?;
    let input_grad = format!("{}.grad", spec.input);
    let mut outputs = vec![(input_grad.clone(), input_grad_value)];
    let mut layers = Vec::new();
    for layer in &spec.layers {
        let g = ctx
            .finalize_grad(layer, &mut grads, &mut finals)
            .ok_or_else(|| AutodiffError::Path(format!("no gradient reached layer `{layer}`")))?;
        let name = format!("{layer}.grad");
        outputs.push((name.clone(), g));
        layers.push((layer.clone(), name));
    }

    let emitted = ctx.finish();
    let existing: HashSet<String> = graph.output.iter().filter_map(|o| o.name.clone()).collect();
    for (index, slot, name) in emitted.forward_outputs {
        let node = &mut graph.node[index];
        while node.output.len() <= slot {
            node.output.push(String::new());
        }
        node.output[slot] = name;
    }
    graph.node.extend(emitted.nodes);
    graph.initializer.extend(emitted.initializers);
    let output_shape = shapes
        .get(&spec.output)
        .map(|s| s.dims.iter().map(|d| d.unwrap_or(-1)).collect::<Vec<_>>());
    graph
        .input
        .push(value_info(WEIGHTS_INPUT, data_type::FLOAT, output_shape.as_deref()));
    for layer in &spec.layers {
        if !existing.contains(layer) {
            graph.output.push(untyped_output(layer));
        }
    }
    for (name, value) in outputs {
        // Expose each gradient under a stable name, whatever node produced it.
        graph.node.push(super::proto::NodeProto {
            name: Some(format!("{name}.identity")),
            op_type: Some("Identity".into()),
            domain: Some(String::new()),
            input: vec![value],
            output: vec![name.clone()],
            ..Default::default()
        });
        graph.output.push(untyped_output(&name));
    }

    let mut built = model.clone();
    built.graph = Some(graph);
    built.ir_version = Some(built.ir_version.unwrap_or(8).max(8));
    set_default_opset(&mut built, opset);
    Ok(BackwardModel {
        model: built,
        input_grad,
        layers,
        opset,
    })
}

fn untyped_output(name: &str) -> super::proto::ValueInfoProto {
    super::proto::ValueInfoProto {
        name: Some(name.to_string()),
        ..Default::default()
    }
}

fn set_default_opset(model: &mut ModelProto, opset: i64) {
    match model
        .opset_import
        .iter_mut()
        .find(|o| matches!(o.domain.as_deref(), None | Some("") | Some("ai.onnx")))
    {
        Some(o) => o.version = Some(opset),
        None => model.opset_import.push(OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(opset),
        }),
    }
}

/// Element types whose tensors carry gradients.
pub fn is_float(elem_type: i32) -> bool {
    matches!(
        elem_type,
        data_type::FLOAT | data_type::DOUBLE | data_type::FLOAT16 | data_type::BFLOAT16
    )
}

/// A float32 scalar-or-tensor initializer named `name`.
pub(crate) fn f32_tensor(name: &str, dims: &[i64], values: &[f32]) -> TensorProto {
    super::builder::float_tensor(name, dims, values)
}
