//! Normalisations: BatchNormalization in its inference form (a per-channel affine map), and
//! InstanceNormalization / LayerNormalization, which normalise with statistics of the input itself.

use super::{first_only, grad0, input, only_input0, RuleError, RuleTable};
use crate::onnx::autodiff::GradContext;
use crate::onnx::node::{attr_float, attr_int};
use crate::onnx::proto::NodeProto;

pub(super) fn register(t: &mut RuleTable) {
    t.register("", "BatchNormalization", batch_norm);
    t.register("", "InstanceNormalization", instance_norm);
    t.register("", "LayerNormalization", layer_norm);
}

type Grads = Result<Vec<Option<String>>, RuleError>;

/// Reshapes a per-channel vector `[C]` to `[C, 1, ...]` so it broadcasts over axis 1 of a rank-`rank` tensor.
fn per_channel(ctx: &mut GradContext, v: &str, rank: usize) -> String {
    let mut shape = vec![-1];
    shape.extend(std::iter::repeat_n(1, rank.saturating_sub(2)));
    let shape = ctx.const_i64("channel_shape", &shape);
    ctx.emit("Reshape", &[v, &shape], vec![])
}

fn batch_norm(ctx: &mut GradContext, n: &NodeProto, g: &[Option<String>], needs: &[bool]) -> Grads {
    only_input0(n, needs, "a BatchNormalization parameter")?;
    if attr_int(n, "training_mode", 0)? != 0 {
        return Err(RuleError::new(
            n,
            "BatchNormalization in training mode is not supported (export the model in eval mode)",
        ));
    }
    let g = grad0(n, g)?;
    let x = input(n, 0);
    let eps = ctx.scalar(attr_float(n, "epsilon", 1e-5)?);
    let var_eps = ctx.emit("Add", &[input(n, 4), &eps], vec![]);
    let std = ctx.emit("Sqrt", &[&var_eps], vec![]);
    let factor = ctx.emit("Div", &[input(n, 1), &std], vec![]);
    let rank = ctx.rank(x)?;
    let factor = per_channel(ctx, &factor, rank);
    Ok(first_only(n, ctx.emit("Mul", &[g, &factor], vec![])))
}

/// `inv_std * (gs - mean(gs) - xhat * mean(gs * xhat))` over `axes`, with `gs` the gradient times the scale.
fn normalized_grad(ctx: &mut GradContext, x: &str, gs: &str, axes: &[i64], eps: f32) -> String {
    let mu = ctx.reduce_mean(x, axes, true);
    let xc = ctx.emit("Sub", &[x, &mu], vec![]);
    let sq = ctx.emit("Mul", &[&xc, &xc], vec![]);
    let var = ctx.reduce_mean(&sq, axes, true);
    let eps = ctx.scalar(eps);
    let var_eps = ctx.emit("Add", &[&var, &eps], vec![]);
    let std = ctx.emit("Sqrt", &[&var_eps], vec![]);
    let inv = ctx.emit("Reciprocal", &[&std], vec![]);
    let xhat = ctx.emit("Mul", &[&xc, &inv], vec![]);
    let mean_gs = ctx.reduce_mean(gs, axes, true);
    let gx = ctx.emit("Mul", &[gs, &xhat], vec![]);
    let mean_gx = ctx.reduce_mean(&gx, axes, true);
    let proj = ctx.emit("Mul", &[&xhat, &mean_gx], vec![]);
    let centered = ctx.emit("Sub", &[gs, &mean_gs], vec![]);
    let diff = ctx.emit("Sub", &[&centered, &proj], vec![]);
    ctx.emit("Mul", &[&diff, &inv], vec![])
}

fn instance_norm(ctx: &mut GradContext, n: &NodeProto, g: &[Option<String>], needs: &[bool]) -> Grads {
    only_input0(n, needs, "an InstanceNormalization parameter")?;
    let g = grad0(n, g)?;
    let x = input(n, 0);
    let rank = ctx.rank(x)?;
    let scale = per_channel(ctx, input(n, 1), rank);
    let gs = ctx.emit("Mul", &[g, &scale], vec![]);
    let axes: Vec<i64> = (2..rank as i64).collect();
    let eps = attr_float(n, "epsilon", 1e-5)?;
    Ok(first_only(n, normalized_grad(ctx, x, &gs, &axes, eps)))
}

fn layer_norm(ctx: &mut GradContext, n: &NodeProto, g: &[Option<String>], needs: &[bool]) -> Grads {
    only_input0(n, needs, "a LayerNormalization parameter")?;
    let g = grad0(n, g)?;
    let x = input(n, 0);
    let rank = ctx.rank(x)? as i64;
    let axis = attr_int(n, "axis", -1)?;
    let axis = if axis < 0 { axis + rank } else { axis };
    let gs = ctx.emit("Mul", &[g, input(n, 1)], vec![]);
    let axes: Vec<i64> = (axis..rank).collect();
    let eps = attr_float(n, "epsilon", 1e-5)?;
    Ok(first_only(n, normalized_grad(ctx, x, &gs, &axes, eps)))
}
