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
mod backward;
mod context;
mod layers;
pub mod rules;
mod top;
mod upgrade;

use std::collections::HashMap;

pub use backward::{build_backward, refusals};
pub use context::GradContext;
pub use layers::{analysis_layers, attention_maps, on_every_path, FeatureLayer, TokenGrid};
pub use rules::{RuleError, RuleSet, RuleTable};
pub use top::{seed_with_best_candidate, seed_with_top_prediction, TARGET_INDEX_OUTPUT};

use super::node::{domain, node_name, op_type};
use super::proto::{data_type, GraphProto, ModelProto, OperatorSetIdProto, TensorProto};

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
    /// Whether the gradient w.r.t. the input is wanted. Without it (and with layers) the backward
    /// pass stops at the layers: the CAM methods read only a layer's gradient, and going on to the
    /// input costs several times as much on a CNN whose layer is its last feature map.
    pub input_grad: bool,
}

/// A built backward model and the names of what it outputs.
#[derive(Debug, Clone)]
pub struct BackwardModel {
    /// The model: the forward graph plus the backward pass.
    pub model: ModelProto,
    /// Gradient of the target w.r.t. the input (empty when the spec did not ask for it).
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
