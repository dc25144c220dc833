//! DeepLIFT's rescale rule (Shrikumar et al. 2017; Captum's `DeepLift`): each elementwise
//! nonlinearity passes `g * (f(x) - f(x')) / (x - x')` instead of `g * f'(x)`, where x' is the
//! same tensor for the reference input, and falls back to the gradient where |x - x'| <= 1e-10.
//! Linear operators keep their exact rules, so the multipliers compose and the attributions
//! `(x - x') * multiplier` sum to f(x) - f(x') (completeness).
//!
//! MaxPool follows Captum: with m = max(y, y') per window, the input's gradient times (m - y') is
//! unpooled to the input's maximum and the reference's gradient times (y - m) to the reference's, the
//! two summed and divided by (x - x'), so contributions still sum to the output's difference. A tied
//! window unpools to its first maximum in row-major order (PyTorch's max index, which Captum
//! unpools to; the plain MaxPool rule's choice). Where overlapping windows share a maximum their
//! shares add up; Captum's `max_unpool` writes one of them, which loses the others' contributions.
//!
//! The pass runs the input and its reference as one batch: the first half of the rows are inputs,
//! the second half their references, row for row. Both halves get the input's multiplier (the
//! references' own gradients are not used).

use super::{grad0, input, output, RuleError, RuleTable};
use crate::onnx::autodiff::GradContext;
use crate::onnx::builder::Attr;
use crate::onnx::node::attr_float;
use crate::onnx::proto::NodeProto;

type Grads = Result<Vec<Option<String>>, RuleError>;

/// Where |x - x'| is at most this, the gradient stands in for the quotient (Captum's eps).
const EPS: f32 = 1e-10;

pub(super) fn register(t: &mut RuleTable) {
    t.register("", "Relu", relu);
    t.register("", "LeakyRelu", leaky_relu);
    t.register("", "Elu", elu);
    t.register("", "Sigmoid", sigmoid);
    t.register("", "Tanh", tanh);
    t.register("", "Softplus", softplus);
    t.register("", "MaxPool", max_pool);
}

/// The first (`first`) or second half of `x`'s rows.
fn half(ctx: &mut GradContext, x: &str, first: bool) -> String {
    let shape = ctx.shape(x);
    let (zero, one, two) = (
        ctx.const_i64("zero", &[0]),
        ctx.const_i64("one", &[1]),
        ctx.const_i64("two", &[2]),
    );
    let rows = ctx.emit("Slice", &[&shape, &zero, &one], vec![]);
    let middle = ctx.emit("Div", &[&rows, &two], vec![]);
    let axes = ctx.const_i64("axis0", &[0]);
    if first {
        ctx.emit("Slice", &[x, &zero, &middle, &axes], vec![])
    } else {
        let end = ctx.const_i64("end", &[i64::MAX]);
        ctx.emit("Slice", &[x, &middle, &end, &axes], vec![])
    }
}

/// `g * m` with m the rescale multiplier of the input half, `local` its gradient there.
fn rescale(
    ctx: &mut GradContext,
    n: &NodeProto,
    g: &[Option<String>],
    local: &dyn Fn(&mut GradContext, &str, &str) -> String,
) -> Grads {
    let g = grad0(n, g)?;
    let (x, y) = (input(n, 0).to_string(), output(n).to_string());
    let (xa, xb) = (half(ctx, &x, true), half(ctx, &x, false));
    let (ya, yb) = (half(ctx, &y, true), half(ctx, &y, false));
    let dx = ctx.emit("Sub", &[&xa, &xb], vec![]);
    let dy = ctx.emit("Sub", &[&ya, &yb], vec![]);
    let eps = ctx.scalar(EPS);
    let size = ctx.emit("Abs", &[&dx], vec![]);
    let apart = ctx.emit("Greater", &[&size, &eps], vec![]);
    let one = ctx.scalar(1.0);
    let safe = ctx.emit("Where", &[&apart, &dx, &one], vec![]);
    let quotient = ctx.emit("Div", &[&dy, &safe], vec![]);
    let gradient = local(ctx, &xa, &ya);
    let m = ctx.emit("Where", &[&apart, &quotient, &gradient], vec![]);
    let both = ctx.emit("Concat", &[&m, &m], vec![("axis", Attr::Int(0))]);
    Ok(vec![Some(ctx.emit("Mul", &[g, &both], vec![]))])
}

fn positive(ctx: &mut GradContext, x: &str) -> String {
    let zero = ctx.scalar(0.0);
    ctx.emit("Greater", &[x, &zero], vec![])
}

fn relu(ctx: &mut GradContext, n: &NodeProto, g: &[Option<String>], _: &[bool]) -> Grads {
    rescale(ctx, n, g, &|ctx, x, _| {
        let pos = positive(ctx, x);
        ctx.emit("CastLike", &[&pos, x], vec![])
    })
}

fn leaky_relu(ctx: &mut GradContext, n: &NodeProto, g: &[Option<String>], _: &[bool]) -> Grads {
    let alpha = attr_float(n, "alpha", 0.01)?;
    rescale(ctx, n, g, &|ctx, x, _| {
        let pos = positive(ctx, x);
        let (one, a) = (ctx.scalar(1.0), ctx.scalar(alpha));
        ctx.emit("Where", &[&pos, &one, &a], vec![])
    })
}

fn elu(ctx: &mut GradContext, n: &NodeProto, g: &[Option<String>], _: &[bool]) -> Grads {
    let alpha = attr_float(n, "alpha", 1.0)?;
    rescale(ctx, n, g, &|ctx, x, y| {
        let pos = positive(ctx, x);
        let (one, a) = (ctx.scalar(1.0), ctx.scalar(alpha));
        let slope = ctx.emit("Add", &[y, &a], vec![]);
        ctx.emit("Where", &[&pos, &one, &slope], vec![])
    })
}

fn sigmoid(ctx: &mut GradContext, n: &NodeProto, g: &[Option<String>], _: &[bool]) -> Grads {
    rescale(ctx, n, g, &|ctx, _, y| {
        let one = ctx.scalar(1.0);
        let rest = ctx.emit("Sub", &[&one, y], vec![]);
        ctx.emit("Mul", &[y, &rest], vec![])
    })
}

fn tanh(ctx: &mut GradContext, n: &NodeProto, g: &[Option<String>], _: &[bool]) -> Grads {
    rescale(ctx, n, g, &|ctx, _, y| {
        let one = ctx.scalar(1.0);
        let square = ctx.emit("Mul", &[y, y], vec![]);
        ctx.emit("Sub", &[&one, &square], vec![])
    })
}

fn softplus(ctx: &mut GradContext, n: &NodeProto, g: &[Option<String>], _: &[bool]) -> Grads {
    rescale(ctx, n, g, &|ctx, x, _| ctx.emit("Sigmoid", &[x], vec![]))
}

/// Captum's maxpool rule (see the module comment).
fn max_pool(ctx: &mut GradContext, n: &NodeProto, g: &[Option<String>], _: &[bool]) -> Grads {
    let g0 = grad0(n, g)?.to_string();
    let (x, y) = (input(n, 0).to_string(), output(n).to_string());
    let (ya, yb) = (half(ctx, &y, true), half(ctx, &y, false));
    let top = ctx.emit("Max", &[&ya, &yb], vec![]);
    let up = ctx.emit("Sub", &[&top, &yb], vec![]);
    let down = ctx.emit("Sub", &[&ya, &top], vec![]);
    let deltas = ctx.emit("Concat", &[&up, &down], vec![("axis", Attr::Int(0))]);
    let weighted = ctx.emit("Mul", &[&g0, &deltas], vec![]);
    // Each half unpooled to its own maxima, then the two summed; and the plain gradient.
    let [unpooled, plain]: [String; 2] = super::pool::unpool_max(ctx, n, &[&weighted, &g0])?
        .try_into()
        .map_err(|_| RuleError::new(n, "MaxPool gave no gradient"))?;
    let (ua, ub) = (half(ctx, &unpooled, true), half(ctx, &unpooled, false));
    let total = ctx.emit("Add", &[&ua, &ub], vec![]);
    let plain = half(ctx, &plain, true);
    let (xa, xb) = (half(ctx, &x, true), half(ctx, &x, false));
    let dx = ctx.emit("Sub", &[&xa, &xb], vec![]);
    let eps = ctx.scalar(EPS);
    let size = ctx.emit("Abs", &[&dx], vec![]);
    let apart = ctx.emit("Greater", &[&size, &eps], vec![]);
    let one = ctx.scalar(1.0);
    let safe = ctx.emit("Where", &[&apart, &dx, &one], vec![]);
    let quotient = ctx.emit("Div", &[&total, &safe], vec![]);
    let grad = ctx.emit("Where", &[&apart, &quotient, &plain], vec![]);
    let mut out = vec![Some(ctx.emit("Concat", &[&grad, &grad], vec![("axis", Attr::Int(0))]))];
    out.resize(n.input.len(), None);
    Ok(out)
}
