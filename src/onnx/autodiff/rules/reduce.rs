//! Reductions: the gradient is broadcast back over the reduced axes (divided by their size for the mean).

use super::{first_only, grad0, input, RuleError, RuleTable};
use crate::onnx::autodiff::GradContext;
use crate::onnx::builder::Attr;
use crate::onnx::node::{attr_int, attr_ints};
use crate::onnx::proto::NodeProto;

pub(super) fn register(t: &mut RuleTable) {
    t.register("", "ReduceSum", reduce_sum);
    t.register("", "ReduceMean", reduce_mean);
}

type Grads = Result<Vec<Option<String>>, RuleError>;

/// The reduced axes (normalised, sorted), from the attribute or the constant second input; all axes when none.
fn reduced_axes(ctx: &GradContext, n: &NodeProto, rank: usize) -> Result<Option<Vec<i64>>, RuleError> {
    let given = match attr_ints(n, "axes")? {
        Some(a) => Some(a),
        None => {
            let name = input(n, 1);
            if name.is_empty() {
                None
            } else {
                Some(
                    ctx.constant_ints(name)
                        .ok_or_else(|| RuleError::new(n, "the axes input must be a constant"))?,
                )
            }
        }
    };
    match given {
        Some(a) if !a.is_empty() => {
            let mut a: Vec<i64> = a.into_iter().map(|v| if v < 0 { v + rank as i64 } else { v }).collect();
            a.sort_unstable();
            Ok(Some(a))
        }
        // Empty axes: all axes, unless noop_with_empty_axes makes the node an identity.
        _ if attr_int(n, "noop_with_empty_axes", 0)? != 0 => Ok(None),
        _ => Ok(Some((0..rank as i64).collect())),
    }
}

/// Broadcasts `g` back over the reduced axes of `x`; returns it with the number of reduced elements.
fn spread(ctx: &mut GradContext, n: &NodeProto, g: &str) -> Result<(String, Option<String>), RuleError> {
    let x = input(n, 0);
    let dims = ctx.dims(x)?.to_vec();
    let Some(axes) = reduced_axes(ctx, n, dims.len())? else {
        return Ok((g.to_string(), None));
    };
    let keep = if attr_int(n, "keepdims", 1)? != 0 {
        g.to_string()
    } else {
        ctx.unsqueeze(g, &axes)
    };
    let shape = ctx.shape(x);
    let expanded = ctx.emit("Expand", &[&keep, &shape], vec![]);
    let count = if axes.iter().all(|&a| dims[a as usize].is_some()) {
        ctx.scalar(axes.iter().map(|&a| dims[a as usize].unwrap_or(1)).product::<i64>() as f32)
    } else {
        let idx = ctx.const_i64("axes", &axes);
        let sizes = ctx.emit("Gather", &[&shape, &idx], vec![("axis", Attr::Int(0))]);
        let prod = ctx.emit("ReduceProd", &[&sizes], vec![("keepdims", Attr::Int(0))]);
        ctx.emit("CastLike", &[&prod, x], vec![])
    };
    Ok((expanded, Some(count)))
}

fn reduce_sum(ctx: &mut GradContext, n: &NodeProto, g: &[Option<String>], _: &[bool]) -> Grads {
    let (dx, _) = spread(ctx, n, grad0(n, g)?)?;
    Ok(first_only(n, dx))
}

fn reduce_mean(ctx: &mut GradContext, n: &NodeProto, g: &[Option<String>], _: &[bool]) -> Grads {
    let (dx, count) = spread(ctx, n, grad0(n, g)?)?;
    Ok(first_only(
        n,
        match count {
            Some(c) => ctx.emit("Div", &[&dx, &c], vec![]),
            None => dx,
        },
    ))
}
