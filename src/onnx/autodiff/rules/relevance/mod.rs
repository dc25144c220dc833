//! Layer-wise relevance propagation (Bach et al. 2015) as a rule table, with zennit's rules and
//! composites (Anders et al.; `zennit.rules`, `zennit.composites`). What flows backwards is
//! relevance, not a gradient: the seed is the target's score (`output * weights`), activations pass
//! it through, routing operators (reshapes, slices, concatenation, max pooling) move it as their
//! gradient does, sums and average pooling split it in proportion to their inputs (Norm), and each
//! linear layer (Conv, Gemm, MatMul) applies its composite's rule:
//!
//! - Epsilon: `R_in = x * J^T (R / stab(z))`, z the layer's output with its bias.
//! - ZPlus: `z = W+ x+ + b+ + W- x-`; `R_in = x+ * W+^T s + x- * W-^T s`, s = R / stab(z).
//! - AlphaBeta(2, 1): 2 x the ZPlus part minus the part through `W- x+ + b- + W+ x-`.
//! - Gamma(0.25): weights `W + g W+` where the output is positive and `W + g W-` where it is
//!   negative (zennit's generalised form, which also allows negative inputs).
//! - ZBox(low, high): `z = Wx + b - (W+ l + b+) - (W- h + b-)`;
//!   `R_in = x * W^T s - l * W+^T s - h * W-^T s`.
//! - Flat: weights and inputs set to one, no bias: `R_in = 1^T (R / stab(z))`.
//!
//! `stab(z) = z + eps * sign(z)` with sign(0) = +1. Modified weights are computed when the graph is
//! built; each "transposed" product `W'^T s` is the exact gradient rule of a copy of the layer with
//! the modified weight, so strides, padding, groups and transposes are handled once, there.
//! Operators without a relevance rule here are refused (listed), not differentiated.

use std::sync::OnceLock;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

mod layer;

use layer::Layer;

use super::{grad0, input, output, Rule, RuleError, RuleTable};
use crate::onnx::autodiff::GradContext;
use crate::onnx::node::{domain, op_type};
use crate::onnx::proto::NodeProto;

type Grads = Result<Vec<Option<String>>, RuleError>;

/// zennit's stabiliser for every rule but Epsilon.
const STABILIZER: f32 = 1e-6;

/// Which rule each layer gets (zennit's composite names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Composite {
    /// The first linear layer Flat, other convolutions ZPlus, dense layers Epsilon (1e-6).
    #[default]
    EpsilonPlusFlat,
    /// The first convolution ZBox (the input's bounds from the model's normalisation), other
    /// convolutions Gamma (0.25), dense layers Epsilon (1e-6).
    EpsilonGammaBox,
    /// Convolutions AlphaBeta (alpha 2, beta 1), dense layers Epsilon (1e-6).
    EpsilonAlpha2Beta1,
    /// Epsilon everywhere (Captum's LRP default, 1e-9).
    Epsilon,
}

impl Composite {
    /// Every composite.
    pub const ALL: [Composite; 4] = [
        Composite::EpsilonPlusFlat,
        Composite::EpsilonGammaBox,
        Composite::EpsilonAlpha2Beta1,
        Composite::Epsilon,
    ];

    /// Its name, as requests spell it.
    pub fn name(self) -> &'static str {
        match self {
            Composite::EpsilonPlusFlat => "epsilon_plus_flat",
            Composite::EpsilonGammaBox => "epsilon_gamma_box",
            Composite::EpsilonAlpha2Beta1 => "epsilon_alpha2_beta1",
            Composite::Epsilon => "epsilon",
        }
    }

    /// The composite's default epsilon.
    pub fn default_epsilon(self) -> f32 {
        match self {
            Composite::Epsilon => 1e-9,
            _ => 1e-6,
        }
    }
}

/// A relevance rule set: a composite and its parameters (floats kept as bits, so rule sets can
/// key built models).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RelevanceRules {
    /// The composite.
    pub composite: Composite,
    epsilon: u32,
    gamma: u32,
}

impl RelevanceRules {
    /// A composite with its epsilon (dense layers; all layers for `Epsilon`) and gamma.
    pub fn new(composite: Composite, epsilon: f32, gamma: f32) -> Self {
        Self {
            composite,
            epsilon: epsilon.to_bits(),
            gamma: gamma.to_bits(),
        }
    }

    /// Epsilon of the Epsilon rule.
    pub fn epsilon(&self) -> f32 {
        f32::from_bits(self.epsilon)
    }

    /// Gamma of the Gamma rule.
    pub fn gamma(&self) -> f32 {
        f32::from_bits(self.gamma)
    }

    /// The stabiliser of the Norm rule (sums, average pooling): epsilon in the all-Epsilon
    /// composite, zennit's 1e-6 in the others.
    fn norm_epsilon(&self) -> f32 {
        match self.composite {
            Composite::Epsilon => self.epsilon(),
            _ => STABILIZER,
        }
    }
}

/// The input's lowest and highest values per channel (ZBox's box).
#[derive(Debug, Clone, PartialEq)]
pub struct InputBounds {
    /// Lowest value per channel.
    pub low: Vec<f32>,
    /// Highest value per channel.
    pub high: Vec<f32>,
}

/// Operators relevance passes through unchanged (elementwise, one input on the path).
const PASS: &[&str] = &[
    "Relu",
    "LeakyRelu",
    "PRelu",
    "Elu",
    "Sigmoid",
    "Tanh",
    "Softplus",
    "Clip",
    "Gelu",
    "HardSigmoid",
    "HardSwish",
    "Softmax",
    "BatchNormalization",
];

/// Operators that move relevance as their gradient moves values.
const ROUTE: &[&str] = &[
    "Reshape",
    "Flatten",
    "Squeeze",
    "Unsqueeze",
    "Transpose",
    "Concat",
    "Split",
    "Slice",
    "Gather",
    "Expand",
    "Identity",
    "Dropout",
    "Cast",
    "Pad",
    "MaxPool",
    "GlobalMaxPool",
];

/// Linear operators without weights to modify: Norm (the Epsilon rule with the stabiliser).
const NORM: &[&str] = &[
    "AveragePool",
    "GlobalAveragePool",
    "ReduceMean",
    "ReduceSum",
    "Resize",
    "ConvTranspose",
];

/// The relevance table for `rules`.
pub(super) fn table(rules: RelevanceRules) -> RuleTable {
    let exact = exact();
    let mut t = RuleTable::empty(super::RuleSet::Relevance(rules));
    for op in ROUTE {
        if let Some(rule) = exact.get("", op) {
            t.register("", op, rule);
        }
    }
    for op in PASS {
        t.register("", op, pass);
    }
    for op in NORM {
        t.register("", op, norm);
    }
    for op in ["Add", "Sub", "Sum", "Mean"] {
        t.register("", op, sum);
    }
    for op in ["Mul", "Div"] {
        t.register("", op, scale);
    }
    for op in ["Conv", "Gemm", "MatMul"] {
        t.register("", op, linear);
    }
    t
}

/// The exact-gradient rules the relevance (and pattern) rules borrow their transposed products from.
pub(super) fn exact() -> &'static RuleTable {
    static TABLE: OnceLock<RuleTable> = OnceLock::new();
    TABLE.get_or_init(RuleTable::exact)
}

fn rules_of(ctx: &GradContext, n: &NodeProto) -> Result<RelevanceRules, RuleError> {
    match ctx.table().set() {
        super::RuleSet::Relevance(r) => Ok(r),
        _ => Err(RuleError::new(n, "a relevance rule outside a relevance table")),
    }
}

/// `z + eps * sign(z)`, sign(0) = +1.
fn stabilize(ctx: &mut GradContext, z: &str, eps: f32) -> String {
    let (zero, e) = (ctx.scalar(0.0), ctx.scalar(eps));
    let up = ctx.emit("GreaterOrEqual", &[z, &zero], vec![]);
    let plus = ctx.emit("Add", &[z, &e], vec![]);
    let minus = ctx.emit("Sub", &[z, &e], vec![]);
    ctx.emit("Where", &[&up, &plus, &minus], vec![])
}

/// `R / stab(z)`.
fn ratio(ctx: &mut GradContext, r: &str, z: &str, eps: f32) -> String {
    let stable = stabilize(ctx, z, eps);
    ctx.emit("Div", &[r, &stable], vec![])
}

/// Which inputs are on the path.
fn on_path(needs: &[bool]) -> Vec<usize> {
    needs.iter().enumerate().filter(|(_, n)| **n).map(|(i, _)| i).collect()
}

/// Relevance unchanged to the one input on the path.
fn pass(ctx: &mut GradContext, n: &NodeProto, g: &[Option<String>], needs: &[bool]) -> Grads {
    let r = grad0(n, g)?.to_string();
    match on_path(needs).as_slice() {
        [i] => {
            let mut out = vec![None; n.input.len()];
            out[*i] = Some(ctx.unbroadcast(&r, output(n), input(n, *i))?);
            Ok(out)
        }
        _ => Err(RuleError::new(
            n,
            "relevance passes through an elementwise operator with one input on the path only",
        )),
    }
}

/// Norm: `R_i = x_i * J_i^T (R / stab(y))` for every input on the path.
fn norm_with(ctx: &mut GradContext, n: &NodeProto, g: &[Option<String>], needs: &[bool], eps: f32) -> Grads {
    let r = grad0(n, g)?.to_string();
    let s = ratio(ctx, &r, output(n), eps);
    let rule = exact_rule(n)?;
    let grads = rule(ctx, n, &[Some(s)], needs)?;
    let mut out = vec![None; n.input.len()];
    for i in on_path(needs) {
        let gi = grads
            .get(i)
            .cloned()
            .flatten()
            .ok_or_else(|| RuleError::new(n, format!("no product for input {i}")))?;
        out[i] = Some(ctx.emit("Mul", &[input(n, i), &gi], vec![]));
    }
    Ok(out)
}

fn norm(ctx: &mut GradContext, n: &NodeProto, g: &[Option<String>], needs: &[bool]) -> Grads {
    let eps = rules_of(ctx, n)?.norm_epsilon();
    norm_with(ctx, n, g, needs, eps)
}

/// Sums split relevance in proportion to their inputs; with one input on the path (a bias or
/// constant shift) relevance passes.
fn sum(ctx: &mut GradContext, n: &NodeProto, g: &[Option<String>], needs: &[bool]) -> Grads {
    if on_path(needs).len() > 1 {
        norm(ctx, n, g, needs)
    } else {
        pass(ctx, n, g, needs)
    }
}

/// Scaling by a constant passes relevance; a product of two tensors on the path has no rule.
fn scale(ctx: &mut GradContext, n: &NodeProto, g: &[Option<String>], needs: &[bool]) -> Grads {
    if on_path(needs).len() > 1 {
        return Err(RuleError::new(
            n,
            "relevance propagation has no rule for a product of two tensors on the path (attention, gating)",
        ));
    }
    pass(ctx, n, g, needs)
}

fn exact_rule(n: &NodeProto) -> Result<Rule, RuleError> {
    exact()
        .get(domain(n), op_type(n))
        .ok_or_else(|| RuleError::new(n, "no gradient rule to transpose"))
}

/// A linear layer's rule, as its composite assigns it.
fn linear(ctx: &mut GradContext, n: &NodeProto, g: &[Option<String>], needs: &[bool]) -> Grads {
    let rules = rules_of(ctx, n)?;
    let conv = op_type(n) == "Conv";
    let first = ctx.at_first_linear();
    if on_path(needs) != [0] {
        if rules.composite == Composite::Epsilon || !(first || conv) {
            return match on_path(needs).len() {
                1 => norm_with(ctx, n, g, needs, rules.epsilon()),
                _ => Err(RuleError::new(
                    n,
                    "relevance propagation has no rule for a product of two tensors on the path (attention)",
                )),
            };
        }
        return Err(RuleError::new(
            n,
            "this composite's rules need the layer's data on input 0 and constant weights on input 1",
        ));
    }
    let layer = Layer::of(ctx, n)?;
    match (rules.composite, first, conv) {
        (Composite::EpsilonPlusFlat, true, _) => layer.flat(ctx, g),
        (Composite::EpsilonGammaBox, true, true) => layer.zbox(ctx, g),
        (Composite::EpsilonPlusFlat, false, true) => layer.alpha_beta(ctx, g, 1.0, 0.0),
        (Composite::EpsilonGammaBox, false, true) => layer.gamma(ctx, g, rules.gamma()),
        (Composite::EpsilonAlpha2Beta1, _, true) => layer.alpha_beta(ctx, g, 2.0, 1.0),
        _ => norm_with(ctx, n, g, needs, rules.epsilon()),
    }
}
