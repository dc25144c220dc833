//! The build: the forward graph plus the backward pass, from the rules of a table. It checks the
//! path, seeds the target, runs each node's rule from the output back to the input, then splices
//! what the rules emitted into the graph and exposes the gradients under stable names.

use std::collections::{HashMap, HashSet};

use super::context::Emitted;
use super::{
    analysis, collect_unsupported, model_opset, prepare_forward, set_default_opset, AutodiffError, BackwardModel,
    GradContext, GradientSpec, GraphRunner, RuleError, RuleTable, ShapeMap, WEIGHTS_INPUT,
};
use crate::onnx::builder::value_info;
use crate::onnx::node::{domain, op_type};
use crate::onnx::proto::{data_type, GraphProto, ModelProto, NodeProto, ValueInfoProto};

/// Builds the backward model for `spec` with the rules of `table`. `model` should come from
/// [`prepare_forward`] and `shapes` from probing it.
pub fn build_backward(
    model: &ModelProto,
    spec: &GradientSpec,
    shapes: &ShapeMap,
    table: &RuleTable,
    runner: Option<&dyn GraphRunner>,
) -> Result<BackwardModel, AutodiffError> {
    build(model, spec, shapes, table, runner, Refusals(None))
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
    if let Err(e) = build(model, spec, shapes, table, runner, Refusals(Some(&mut found))) {
        found.push(e.to_string());
    }
    found
}

/// Where a build's refusals go: a request's build stops at the first; the report's dry run lists
/// each and carries on.
struct Refusals<'r>(Option<&'r mut Vec<String>>);

impl Refusals<'_> {
    /// Lists `e` when listing, else returns it as the build's error.
    fn note(&mut self, e: RuleError) -> Result<(), AutodiffError> {
        match self.0.as_deref_mut() {
            Some(list) => {
                list.push(e.to_string());
                Ok(())
            }
            None => Err(e.into()),
        }
    }
}

/// Gradient contributions per tensor, and each tensor's summed gradient once finalised.
#[derive(Default)]
struct Flow {
    grads: HashMap<String, Vec<String>>,
    finals: HashMap<String, String>,
}

impl Flow {
    /// The summed gradient of `tensor`, `None` when nothing flowed to it.
    fn finalize(&mut self, ctx: &mut GradContext, tensor: &str) -> Option<String> {
        ctx.finalize_grad(tensor, &mut self.grads, &mut self.finals)
    }
}

fn build(
    model: &ModelProto,
    spec: &GradientSpec,
    shapes: &ShapeMap,
    table: &RuleTable,
    runner: Option<&dyn GraphRunner>,
    mut refused: Refusals,
) -> Result<BackwardModel, AutodiffError> {
    let prepared = prepare_forward(model)?;
    let model = &prepared;
    let opset = model_opset(model);
    let mut graph = model.graph.clone().ok_or(AutodiffError::NoGraph)?;
    if table.propagates_relevance() {
        // zennit's canonizer: relevance rules apply to the convolution with its normalisation in it.
        crate::onnx::fold::batch_norms(&mut graph);
    }
    let mut path = checked_path(&graph, spec, shapes)?;
    if !spec.input_grad {
        // Only the layers' gradients are wanted: differentiate the part after them.
        path = analysis::Path::from_sources(&graph, &spec.layers, std::slice::from_ref(&spec.output), shapes);
    }
    let unsupported = collect_unsupported(model, &graph, &path, table);
    match refused.0.as_deref_mut() {
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
    let seed = if table.seeds_with_score() {
        // Relevance (and the pattern rules' signal) starts as the target's score: the output
        // times the weights.
        ctx.emit("Mul", &[&spec.output, WEIGHTS_INPUT], vec![])
    } else {
        WEIGHTS_INPUT.to_string()
    };
    let mut flow = Flow::default();
    flow.grads.insert(spec.output.clone(), vec![seed]);
    for &index in path.nodes.iter().rev() {
        backward_node(&mut ctx, &graph, index, &path, &mut flow, &mut refused)?;
    }
    let GradientOutputs {
        exposed,
        input_grad,
        layers,
    } = gradient_outputs(&mut ctx, spec, &mut flow)?;
    let emitted = ctx.finish();
    splice(&mut graph, emitted, spec, shapes, exposed);

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

/// The differentiable path from the input to the output, checked to reach the output and every
/// requested layer.
fn checked_path(graph: &GraphProto, spec: &GradientSpec, shapes: &ShapeMap) -> Result<analysis::Path, AutodiffError> {
    let path = analysis::Path::find(graph, &spec.input, std::slice::from_ref(&spec.output), shapes);
    if !spec.input_grad && spec.layers.is_empty() {
        return Err(AutodiffError::Path(
            "no gradient asked for: neither the input's nor a layer's".into(),
        ));
    }
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
    Ok(path)
}

/// Runs the rule of node `index` on its outputs' gradients and adds what it gives to its inputs'.
fn backward_node(
    ctx: &mut GradContext,
    graph: &GraphProto,
    index: usize,
    path: &analysis::Path,
    flow: &mut Flow,
    refused: &mut Refusals,
) -> Result<(), AutodiffError> {
    let node = graph.node[index].clone();
    let out_grads: Vec<Option<String>> = node.output.iter().map(|o| flow.finalize(ctx, o)).collect();
    if out_grads.iter().all(Option::is_none) {
        return Ok(());
    }
    let needs: Vec<bool> = node
        .input
        .iter()
        .map(|i| !i.is_empty() && path.depends.contains(i))
        .collect();
    if !needs.iter().any(|n| *n) {
        return Ok(());
    }
    ctx.begin_node(index, &node);
    let rule = ctx.table().get(domain(&node), op_type(&node));
    let outcome = match rule {
        Some(rule) => rule(ctx, &node, &out_grads, &needs),
        None => Err(RuleError::new(&node, "no gradient rule")),
    };
    let in_grads = match (outcome, refused.0.as_deref_mut()) {
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
            Some(g) => flow.grads.entry(input.clone()).or_default().push(g),
            None => refused.note(RuleError::new(
                &node,
                format!("the rule gave no gradient for input {i} (`{input}`)"),
            ))?,
        }
    }
    Ok(())
}

/// A gradient to expose under a stable name: (output name, tensor that holds it).
type Exposed = (String, String);

/// The gradients the built model outputs.
struct GradientOutputs {
    /// The input's, then each requested layer's.
    exposed: Vec<Exposed>,
    /// The input gradient's output name (empty when not asked for).
    input_grad: String,
    /// Per requested layer: (layer, its gradient's output name).
    layers: Vec<(String, String)>,
}

/// The gradients the built model outputs, finalised.
fn gradient_outputs(
    ctx: &mut GradContext,
    spec: &GradientSpec,
    flow: &mut Flow,
) -> Result<GradientOutputs, AutodiffError> {
    let mut outputs = Vec::new();
    let mut input_grad = String::new();
    if spec.input_grad {
        let value = flow
            .finalize(ctx, &spec.input)
            .ok_or_else(|| AutodiffError::Path(format!("no gradient reached input `{}`", spec.input)))?;
        input_grad = format!("{}.grad", spec.input);
        outputs.push((input_grad.clone(), value));
    }
    let mut layers = Vec::new();
    for layer in &spec.layers {
        let g = flow
            .finalize(ctx, layer)
            .ok_or_else(|| AutodiffError::Path(format!("no gradient reached layer `{layer}`")))?;
        let name = format!("{layer}.grad");
        outputs.push((name.clone(), g));
        layers.push((layer.clone(), name));
    }
    Ok(GradientOutputs {
        exposed: outputs,
        input_grad,
        layers,
    })
}

/// Adds what the rules emitted to `graph`, the target weights as an input, and the requested
/// layers and gradients as outputs.
fn splice(graph: &mut GraphProto, emitted: Emitted, spec: &GradientSpec, shapes: &ShapeMap, outputs: Vec<Exposed>) {
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
        graph.node.push(NodeProto {
            name: Some(format!("{name}.identity")),
            op_type: Some("Identity".into()),
            domain: Some(String::new()),
            input: vec![value],
            output: vec![name.clone()],
            ..Default::default()
        });
        graph.output.push(untyped_output(&name));
    }
}

fn untyped_output(name: &str) -> ValueInfoProto {
    ValueInfoProto {
        name: Some(name.to_string()),
        ..Default::default()
    }
}
