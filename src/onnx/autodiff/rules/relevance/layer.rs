//! The relevance rules of a linear layer with constant weights (Conv, Gemm, MatMul): ZPlus,
//! AlphaBeta, Gamma, ZBox and Flat, each built from forward copies of the layer with modified
//! weights and the exact gradient rule of such a copy (the "transposed" product).

use super::{exact_rule, ratio, Grads, STABILIZER};
use crate::onnx::autodiff::rules::{grad0, input, output, RuleError};
use crate::onnx::autodiff::GradContext;
use crate::onnx::node::{attr_float, op_type};
use crate::onnx::proto::NodeProto;

/// A linear layer whose data is input 0 and weight input 1 (a constant), with its optional bias.
pub(super) struct Layer<'n> {
    node: &'n NodeProto,
    x: String,
    w: (Vec<i64>, Vec<f32>),
    b: Option<(Vec<i64>, Vec<f32>)>,
}

/// A modified weight and bias, added to the graph.
struct Params {
    w: String,
    b: Option<String>,
}

impl<'n> Layer<'n> {
    pub(super) fn of(ctx: &GradContext, n: &'n NodeProto) -> Result<Self, RuleError> {
        let w = ctx
            .constant_tensor(input(n, 1))
            .ok_or_else(|| RuleError::new(n, "the relevance rules need constant weights"))?;
        let b = match input(n, 2) {
            "" => None,
            name => Some(
                ctx.constant_tensor(name)
                    .ok_or_else(|| RuleError::new(n, "the relevance rules need a constant bias"))?,
            ),
        };
        if op_type(n) == "Gemm" {
            let (alpha, beta) = (attr_float(n, "alpha", 1.0)?, attr_float(n, "beta", 1.0)?);
            if alpha != 1.0 || (beta != 1.0 && b.is_some()) {
                return Err(RuleError::new(n, "the relevance rules need Gemm with alpha and beta 1"));
            }
        }
        Ok(Self {
            node: n,
            x: input(n, 0).to_string(),
            w,
            b,
        })
    }

    /// The weight and bias with `f` applied to each value (`bias: false` drops the bias). Callers
    /// name them `lrp.*`, the prefix built graphs have always had (their node names stay stable).
    fn params(&self, ctx: &mut GradContext, what: &str, f: impl Fn(f32) -> f32, bias: bool) -> Params {
        let w = ctx.const_f32(
            &format!("{what}.weight"),
            &self.w.0,
            &self.w.1.iter().map(|v| f(*v)).collect::<Vec<_>>(),
        );
        let b = match (&self.b, bias) {
            (Some((dims, values)), true) => Some(ctx.const_f32(
                &format!("{what}.bias"),
                dims,
                &values.iter().map(|v| f(*v)).collect::<Vec<_>>(),
            )),
            _ => None,
        };
        Params { w, b }
    }

    /// The layer's output for input `x` with parameters `p`.
    fn forward(&self, ctx: &mut GradContext, x: &str, p: &Params) -> String {
        let mut inputs = vec![x, p.w.as_str()];
        if let Some(b) = &p.b {
            inputs.push(b);
        }
        ctx.emit_like(self.node, &inputs)
    }

    /// `W'^T s` at input `x` (shaped like the layer's input): the gradient rule of a copy of the
    /// layer with weight `w`.
    fn transposed(&self, ctx: &mut GradContext, x: &str, w: &str, s: &str) -> Result<String, RuleError> {
        ctx.alias_shape(x, &self.x);
        let out = ctx.fresh("copy.out");
        ctx.alias_shape(&out, output(self.node));
        let mut copy = self.node.clone();
        copy.input = vec![x.to_string(), w.to_string()];
        copy.output = vec![out];
        let rule = exact_rule(self.node)?;
        rule(ctx, &copy, &[Some(s.to_string())], &[true, false])?
            .into_iter()
            .next()
            .flatten()
            .ok_or_else(|| RuleError::new(self.node, "no transposed product"))
    }

    /// `x * W'^T s`.
    fn reduce(&self, ctx: &mut GradContext, x: &str, w: &str, s: &str) -> Result<String, RuleError> {
        let t = self.transposed(ctx, x, w, s)?;
        Ok(ctx.emit("Mul", &[x, &t], vec![]))
    }

    /// The input's positive and (unless it cannot be negative) negative parts.
    fn split_input(&self, ctx: &mut GradContext) -> (String, Option<String>) {
        if non_negative(ctx, &self.x, 0) {
            return (self.x.clone(), None);
        }
        let zero = ctx.scalar(0.0);
        let positive = ctx.emit("Max", &[&self.x, &zero], vec![]);
        let negative = ctx.emit("Min", &[&self.x, &zero], vec![]);
        ctx.alias_shape(&positive, &self.x);
        ctx.alias_shape(&negative, &self.x);
        (positive, Some(negative))
    }

    /// AlphaBeta: `alpha * (x+ W+ + x- W-) - beta * (x+ W- + x- W+)`, each part normalised by its
    /// own output; ZPlus is alpha 1, beta 0.
    pub(super) fn alpha_beta(&self, ctx: &mut GradContext, g: &[Option<String>], alpha: f32, beta: f32) -> Grads {
        let r = grad0(self.node, g)?.to_string();
        let (xp, xn) = self.split_input(ctx);
        let plus = self.params(ctx, "lrp.plus", |v| v.max(0.0), true);
        let Some(xn) = xn else {
            return self.alpha_beta_non_negative(ctx, &r, &plus, alpha, beta);
        };
        let minus = self.params(ctx, "lrp.minus", |v| v.min(0.0), true);
        let plus_nb = Params {
            w: plus.w.clone(),
            b: None,
        };
        let minus_nb = Params {
            w: minus.w.clone(),
            b: None,
        };
        // The part that raises the output (x+ W+ + b+ + x- W-) and the part that lowers it.
        let mut relevance = self.part(ctx, &r, &xp, &xn, &plus, &minus_nb, alpha)?;
        if beta != 0.0 {
            let lowered = self.part(ctx, &r, &xp, &xn, &minus, &plus_nb, beta)?;
            relevance = ctx.emit("Sub", &[&relevance, &lowered], vec![]);
        }
        Ok(self.only_data(relevance))
    }

    /// AlphaBeta on an input that cannot be negative, with one extra forward and at most two
    /// transposed products: the lowering part's output is `y - (W+ x + b+)` (as b = b+ + b-), and
    /// `alpha W+^T s1 - beta W-^T s2 = W+^T (alpha s1 + beta s2) - beta W^T s2`.
    fn alpha_beta_non_negative(&self, ctx: &mut GradContext, r: &str, plus: &Params, alpha: f32, beta: f32) -> Grads {
        let raised = self.forward(ctx, &self.x, plus);
        let s1 = ratio(ctx, r, &raised, STABILIZER);
        let alpha_k = ctx.scalar(alpha);
        let mut through_plus = if alpha == 1.0 {
            s1
        } else {
            ctx.emit("Mul", &[&s1, &alpha_k], vec![])
        };
        let mut through_w = None;
        if beta != 0.0 {
            let lowered = ctx.emit("Sub", &[output(self.node), &raised], vec![]);
            let s2 = ratio(ctx, r, &lowered, STABILIZER);
            let beta_k = ctx.scalar(beta);
            let s2 = ctx.emit("Mul", &[&s2, &beta_k], vec![]);
            through_plus = ctx.emit("Add", &[&through_plus, &s2], vec![]);
            through_w = Some(s2);
        }
        let mut t = self.transposed(ctx, &self.x, &plus.w, &through_plus)?;
        if let Some(s2) = through_w {
            let w = input(self.node, 1).to_string();
            let back = self.transposed(ctx, &self.x, &w, &s2)?;
            t = ctx.emit("Sub", &[&t, &back], vec![]);
        }
        Ok(self.only_data(ctx.emit("Mul", &[&self.x, &t], vec![])))
    }

    /// `weight * (x+ * P^T s + x- * Q^T s)` with `s = R / stab(x+ P + x- Q)` (P with its bias).
    #[allow(clippy::too_many_arguments)] // the relevance, the input's two parts, their two weights, the factor
    fn part(
        &self,
        ctx: &mut GradContext,
        r: &str,
        xp: &str,
        xn: &str,
        p: &Params,
        q: &Params,
        weight: f32,
    ) -> Result<String, RuleError> {
        let zp = self.forward(ctx, xp, p);
        let zn = self.forward(ctx, xn, q);
        let z = ctx.emit("Add", &[&zp, &zn], vec![]);
        let s = ratio(ctx, r, &z, STABILIZER);
        let a = self.reduce(ctx, xp, &p.w, &s)?;
        let b = self.reduce(ctx, xn, &q.w, &s)?;
        let mut total = ctx.emit("Add", &[&a, &b], vec![]);
        if weight != 1.0 {
            let k = ctx.scalar(weight);
            total = ctx.emit("Mul", &[&total, &k], vec![]);
        }
        Ok(total)
    }

    /// zennit's generalised Gamma: where the output is positive, weights `W + gamma W+` on x+
    /// and `W + gamma W-` on x-; where it is negative, the other way round.
    pub(super) fn gamma(&self, ctx: &mut GradContext, g: &[Option<String>], gamma: f32) -> Grads {
        let r = grad0(self.node, g)?.to_string();
        let (xp, xn) = self.split_input(ctx);
        let Some(xn) = xn else {
            return self.gamma_non_negative(ctx, &r, gamma);
        };
        let up = self.params(ctx, "lrp.gamma_plus", |v| v + gamma * v.max(0.0), true);
        let down = self.params(ctx, "lrp.gamma_minus", |v| v + gamma * v.min(0.0), true);
        let mut sides = Vec::with_capacity(2);
        for (positive, p, q) in [(true, &up, &down), (false, &down, &up)] {
            let q = Params {
                w: q.w.clone(),
                b: None,
            };
            let masked = self.where_output(ctx, &r, positive);
            sides.push(self.part(ctx, &masked, &xp, &xn, p, &q, 1.0)?);
        }
        Ok(self.only_data(ctx.emit("Add", &[&sides[0], &sides[1]], vec![])))
    }

    /// `r` where the layer's output is positive (`positive`) or negative, else 0.
    fn where_output(&self, ctx: &mut GradContext, r: &str, positive: bool) -> String {
        let (y, zero) = (output(self.node), ctx.scalar(0.0));
        let side = ctx.emit(if positive { "Greater" } else { "Less" }, &[y, &zero], vec![]);
        let side = ctx.emit("CastLike", &[&side, r], vec![]);
        ctx.emit("Mul", &[r, &side], vec![])
    }

    /// Gamma on an input that cannot be negative, with one extra forward and two transposed
    /// products: with p = W+ x + b+ and y = W x + b, the positive side's output is `y + gamma p`
    /// and the negative side's `y + gamma (y - p)`; the products fold into
    /// `W^T (s+ + (1 + gamma) s-) + gamma W+^T (s+ - s-)`.
    fn gamma_non_negative(&self, ctx: &mut GradContext, r: &str, gamma: f32) -> Grads {
        let plus = self.params(ctx, "lrp.plus", |v| v.max(0.0), true);
        let y = output(self.node).to_string();
        let p = self.forward(ctx, &self.x, &plus);
        let k = ctx.scalar(gamma);
        let gp = ctx.emit("Mul", &[&p, &k], vec![]);
        let up = ctx.emit("Add", &[&y, &gp], vec![]);
        let rest = ctx.emit("Sub", &[&y, &p], vec![]);
        let grest = ctx.emit("Mul", &[&rest, &k], vec![]);
        let down = ctx.emit("Add", &[&y, &grest], vec![]);
        let mut sides = Vec::new();
        for (positive, z) in [(true, &up), (false, &down)] {
            let masked = self.where_output(ctx, r, positive);
            sides.push(ratio(ctx, &masked, z, STABILIZER));
        }
        let (s_up, s_down) = (&sides[0], &sides[1]);
        let one_k = ctx.scalar(1.0 + gamma);
        let scaled_down = ctx.emit("Mul", &[s_down, &one_k], vec![]);
        let through_w = ctx.emit("Add", &[s_up, &scaled_down], vec![]);
        let diff = ctx.emit("Sub", &[s_up, s_down], vec![]);
        let through_plus = ctx.emit("Mul", &[&diff, &k], vec![]);
        let w = input(self.node, 1).to_string();
        let a = self.transposed(ctx, &self.x, &w, &through_w)?;
        let b = self.transposed(ctx, &self.x, &plus.w, &through_plus)?;
        let t = ctx.emit("Add", &[&a, &b], vec![]);
        Ok(self.only_data(ctx.emit("Mul", &[&self.x, &t], vec![])))
    }

    /// ZBox: the input lies in a box [low, high] per channel.
    pub(super) fn zbox(&self, ctx: &mut GradContext, g: &[Option<String>]) -> Grads {
        let r = grad0(self.node, g)?.to_string();
        let bounds = ctx.table().input_bounds().cloned().ok_or_else(|| {
            RuleError::new(
                self.node,
                "the ZBox rule needs the input's bounds: an image model (they come from its normalisation)",
            )
        })?;
        let dims = ctx.dims(&self.x)?.to_vec();
        if dims.len() < 2 || dims[1] != Some(bounds.low.len() as i64) {
            return Err(RuleError::new(
                self.node,
                format!(
                    "the ZBox rule's bounds have {} channels; the layer's input has {:?}",
                    bounds.low.len(),
                    dims.get(1).copied().flatten()
                ),
            ));
        }
        let mut per_channel = vec![1i64; dims.len()];
        per_channel[1] = bounds.low.len() as i64;
        let shape = ctx.shape(&self.x);
        let low = ctx.const_f32("lrp.low", &per_channel, &bounds.low);
        let high = ctx.const_f32("lrp.high", &per_channel, &bounds.high);
        let low = ctx.emit("Expand", &[&low, &shape], vec![]);
        let high = ctx.emit("Expand", &[&high, &shape], vec![]);
        let plus = self.params(ctx, "lrp.plus", |v| v.max(0.0), true);
        let minus = self.params(ctx, "lrp.minus", |v| v.min(0.0), true);
        let zl = self.forward(ctx, &low, &plus);
        let zh = self.forward(ctx, &high, &minus);
        let z = ctx.emit("Sub", &[output(self.node), &zl], vec![]);
        let z = ctx.emit("Sub", &[&z, &zh], vec![]);
        let s = ratio(ctx, &r, &z, STABILIZER);
        let w = input(self.node, 1).to_string();
        let from_x = self.reduce(ctx, &self.x, &w, &s)?;
        let from_low = self.reduce(ctx, &low, &plus.w, &s)?;
        let from_high = self.reduce(ctx, &high, &minus.w, &s)?;
        let relevance = ctx.emit("Sub", &[&from_x, &from_low], vec![]);
        let relevance = ctx.emit("Sub", &[&relevance, &from_high], vec![]);
        Ok(self.only_data(relevance))
    }

    /// Flat: weights and inputs of one, no bias; relevance spreads evenly over each output's
    /// receptive field.
    pub(super) fn flat(&self, ctx: &mut GradContext, g: &[Option<String>]) -> Grads {
        let r = grad0(self.node, g)?.to_string();
        let ones = self.params(ctx, "lrp.flat", |_| 1.0, false);
        let shape = ctx.shape(&self.x);
        let one = ctx.scalar(1.0);
        let x1 = ctx.emit("Expand", &[&one, &shape], vec![]);
        let z = self.forward(ctx, &x1, &ones);
        let s = ratio(ctx, &r, &z, STABILIZER);
        let relevance = self.transposed(ctx, &x1, &ones.w, &s)?;
        Ok(self.only_data(relevance))
    }

    fn only_data(&self, relevance: String) -> Vec<Option<String>> {
        let mut out = vec![None; self.node.input.len()];
        out[0] = Some(relevance);
        out
    }
}

/// True when `tensor` cannot be negative: the output of a ReLU (or a sigmoid, softplus, clip at
/// zero or above) possibly through pooling and reshapes. Then the rules skip the negative part.
fn non_negative(ctx: &GradContext, tensor: &str, depth: usize) -> bool {
    if depth > 32 {
        return false;
    }
    let Some(n) = ctx.producer(tensor) else {
        return false;
    };
    match op_type(n) {
        "Relu" | "Sigmoid" | "Softplus" | "Softmax" => true,
        "Clip" => ctx
            .constant_floats(input(n, 1))
            .and_then(|v| v.first().copied())
            .is_some_and(|low| low >= 0.0),
        "MaxPool" | "AveragePool" | "GlobalAveragePool" | "GlobalMaxPool" | "Reshape" | "Flatten" | "Identity"
        | "Dropout" | "Squeeze" | "Unsqueeze" | "Transpose" => non_negative(ctx, input(n, 0), depth + 1),
        "Concat" => n.input.iter().all(|i| {
            ctx.constant_floats(i).is_some_and(|v| v.iter().all(|x| *x >= 0.0)) || non_negative(ctx, i, depth + 1)
        }),
        _ => false,
    }
}
