//! PatternNet and PatternAttribution (Kindermans et al., ICLR 2018) as a rule table: the exact
//! gradient rules, except that each linear layer (Conv, Gemm, MatMul) transposes its fitted pattern
//! `a` (PatternNet) or the weight times the pattern `w * a` (PatternAttribution) in place of its
//! weight, as iNNvestigate's `PatternNetReverseKernelLayer` does (albermax/innvestigate,
//! `analyzer/pattern_based.py`: the pattern layer's gradient, after the activation's). ReLU keeps
//! its forward mask and max pooling its switches (the exact rules). The seed is the target's score,
//! so PatternNet answers the signal `a y` for a linear model, and PatternAttribution, whose
//! patterns satisfy `w^T a = 1` per output neuron, hands each linear layer's total relevance on
//! unchanged (what a ReLU blocks is lost, as in the paper).

use super::{grad0, input, output, RuleError, RuleTable};
use crate::onnx::autodiff::GradContext;
use crate::onnx::node::op_type;
use crate::onnx::proto::NodeProto;

type Grads = Result<Vec<Option<String>>, RuleError>;

/// Which of the two methods, and which fitted patterns (a digest of the data they were fitted
/// on, so a refit builds a new backward model).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PatternRules {
    /// PatternAttribution (`w * a`) rather than PatternNet (`a`).
    pub attribution: bool,
    /// The patterns' digest.
    pub digest: u64,
}

/// The pattern table for `rules` (its patterns come with [`RuleTable::with_patterns`]).
pub(super) fn table(rules: PatternRules) -> RuleTable {
    let mut t = RuleTable::exact();
    t.set = super::RuleSet::Pattern(rules);
    for op in ["Conv", "Gemm", "MatMul"] {
        t.register("", op, linear);
    }
    t
}

/// A linear layer: the exact input-gradient rule of a copy of the layer whose weight is the
/// pattern (or weight times pattern), without its bias.
fn linear(ctx: &mut GradContext, n: &NodeProto, g: &[Option<String>], needs: &[bool]) -> Grads {
    let attribution = match ctx.table().set() {
        super::RuleSet::Pattern(r) => r.attribution,
        _ => return Err(RuleError::new(n, "a pattern rule outside a pattern table")),
    };
    if needs.first() != Some(&true) || needs.iter().skip(1).any(|n| *n) {
        return Err(RuleError::new(
            n,
            "patterns need the layer's data on input 0 and constant weights on input 1",
        ));
    }
    let weight = input(n, 1).to_string();
    let pattern = ctx
        .table()
        .patterns()
        .and_then(|p| p.layers.get(&weight))
        .ok_or_else(|| RuleError::new(n, "no pattern was fitted for this layer"))?;
    let values = if attribution {
        let (_, w) = ctx
            .constant_tensor(&weight)
            .ok_or_else(|| RuleError::new(n, "PatternAttribution needs constant weights"))?;
        if w.len() != pattern.values.len() {
            return Err(RuleError::new(n, "the pattern does not match the weight"));
        }
        w.iter().zip(&pattern.values).map(|(w, a)| w * a).collect()
    } else {
        pattern.values.clone()
    };
    let what = if attribution {
        "pattern.attribution"
    } else {
        "pattern.net"
    };
    let replaced = ctx.const_f32(what, &pattern.dims, &values);
    let r = grad0(n, g)?.to_string();
    let grad = transposed(ctx, n, &replaced, &r)?;
    let mut out = vec![None; n.input.len()];
    out[0] = Some(grad);
    Ok(out)
}

/// `W'^T s` for a linear node `n` with weight `w` in place of its own: the exact gradient rule of
/// a copy of the node with inputs `[x, w]` (strides, padding, groups and transposes handled there).
pub(crate) fn transposed(ctx: &mut GradContext, n: &NodeProto, w: &str, s: &str) -> Result<String, RuleError> {
    let x = input(n, 0).to_string();
    let out = ctx.fresh("copy.out");
    ctx.alias_shape(&out, output(n));
    let mut copy = n.clone();
    copy.input = vec![x, w.to_string()];
    copy.output = vec![out];
    let rule = super::relevance::exact()
        .get("", op_type(n))
        .ok_or_else(|| RuleError::new(n, "no gradient rule to transpose"))?;
    rule(ctx, &copy, &[Some(s.to_string())], &[true, false])?
        .into_iter()
        .next()
        .flatten()
        .ok_or_else(|| RuleError::new(n, "no transposed product"))
}
