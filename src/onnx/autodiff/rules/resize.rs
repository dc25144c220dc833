//! Resize: linear in its input and separable by axis, so `Y = A_h X A_w^T` (for the usual 2-D
//! case) and `dX = A_h^T G A_w`. Each axis's matrix is obtained at build time by running the same
//! Resize node on an identity, which reproduces ONNX Runtime's coordinate arithmetic exactly for
//! every mode (nearest, linear, cubic) and coordinate transformation.

use super::{first_only, grad0, input, output, RuleError, RuleTable};
use crate::onnx::autodiff::GradContext;
use crate::onnx::builder::{float_tensor, int64_tensor};
use crate::onnx::node::{attr_ints, attr_string};
use crate::onnx::proto::NodeProto;

pub(super) fn register(t: &mut RuleTable) {
    t.register("", "Resize", resize);
}

type Grads = Result<Vec<Option<String>>, RuleError>;

fn resize(ctx: &mut GradContext, n: &NodeProto, g: &[Option<String>], needs: &[bool]) -> Grads {
    if needs.iter().skip(1).any(|x| *x) {
        return Err(RuleError::new(
            n,
            "Resize scales or sizes that depend on the input are not supported",
        ));
    }
    if attr_string(n, "coordinate_transformation_mode", "half_pixel")? == "tf_crop_and_resize" {
        return Err(RuleError::new(n, "Resize with tf_crop_and_resize is not supported"));
    }
    if attr_string(n, "keep_aspect_ratio_policy", "stretch")? != "stretch" {
        return Err(RuleError::new(
            n,
            "Resize with keep_aspect_ratio_policy other than stretch is not supported",
        ));
    }
    if attr_ints(n, "axes")?.is_some() {
        return Err(RuleError::new(n, "Resize with the axes attribute is not supported"));
    }
    let g = grad0(n, g)?;
    let (x, y) = (input(n, 0), output(n));
    let x_dims = ctx.dims(x)?.to_vec();
    let y_dims = ctx.dims(y)?.to_vec();
    let rank = x_dims.len();
    let scales = if input(n, 2).is_empty() {
        None
    } else {
        ctx.constant_floats(input(n, 2)).filter(|s| !s.is_empty())
    };
    let sizes = if input(n, 3).is_empty() {
        None
    } else {
        ctx.constant_ints(input(n, 3))
    };
    if scales.is_none() && sizes.is_none() {
        return Err(RuleError::new(n, "Resize needs constant scales or sizes"));
    }
    let runner = ctx
        .runner()
        .ok_or_else(|| RuleError::new(n, "Resize gradients need a build-time runner"))?;
    let mut current = g.to_string();
    for axis in 0..rank {
        let scale = scales.as_ref().map(|s| s[axis]);
        let (Some(size_in), Some(size_out)) = (x_dims[axis], y_dims[axis]) else {
            // An axis scaled by 1 (the dynamic batch of paddle2onnx's upsampling) is left alone.
            if scale == Some(1.0) {
                continue;
            }
            return Err(RuleError::new(
                n,
                format!("Resize needs static sizes; axis {axis} is dynamic"),
            ));
        };
        if size_in == size_out && scale.is_none_or(|s| s == 1.0) {
            continue;
        }
        let matrix = axis_matrix(runner, n, rank, axis, size_in, size_out, scale, ctx.opset())?;
        current = super::axis::apply_transposed(ctx, &current, rank, axis, (&matrix, size_out, size_in));
    }
    Ok(first_only(n, current))
}

/// The `[out, in]` interpolation matrix of one axis, from running the node on an identity.
#[allow(clippy::too_many_arguments)]
fn axis_matrix(
    runner: &dyn crate::onnx::autodiff::GraphRunner,
    n: &NodeProto,
    rank: usize,
    axis: usize,
    size_in: i64,
    size_out: i64,
    scale: Option<f32>,
    opset: i64,
) -> Result<Vec<f32>, RuleError> {
    let mut node = n.clone();
    node.input = vec!["x".into(), String::new(), String::new(), String::new()];
    let mut initializers = Vec::new();
    match scale {
        Some(s) => {
            let mut sc = vec![1f32; rank];
            sc[axis] = s;
            initializers.push(float_tensor("scales", &[rank as i64], &sc));
            node.input[2] = "scales".into();
        }
        None => {
            let stack = if axis == 0 { 1 } else { 0 };
            let mut sz = vec![1i64; rank];
            sz[stack] = size_in;
            sz[axis] = size_out;
            initializers.push(int64_tensor("sizes", &[rank as i64], &sz));
            node.input[3] = "sizes".into();
        }
    }
    super::axis::matrix(runner, n, node, initializers, rank, (axis, size_in, size_out), opset)
}
