//! Resize: linear in its input and separable by axis, so `Y = A_h X A_w^T` (for the usual 2-D
//! case) and `dX = A_h^T G A_w`. Each axis's matrix is obtained at build time by running the same
//! Resize node on an identity, which reproduces ONNX Runtime's coordinate arithmetic exactly for
//! every mode (nearest, linear, cubic) and coordinate transformation.

use super::{first_only, grad0, input, output, RuleError, RuleTable};
use crate::onnx::autodiff::GradContext;
use crate::onnx::builder::{float_tensor, int64_tensor, value_info, Attr};
use crate::onnx::node::{attr_ints, attr_string};
use crate::onnx::proto::{data_type, GraphProto, ModelProto, NodeProto, OperatorSetIdProto};

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
        let (Some(size_in), Some(size_out)) = (x_dims[axis], y_dims[axis]) else {
            return Err(RuleError::new(
                n,
                format!("Resize needs static sizes; axis {axis} is dynamic"),
            ));
        };
        let scale = scales.as_ref().map(|s| s[axis]);
        if size_in == size_out && scale.is_none_or(|s| s == 1.0) {
            continue;
        }
        let matrix = axis_matrix(runner, n, rank, axis, size_in, size_out, scale, ctx.opset())?;
        let a = ctx.const_f32("resize_matrix", &[size_out, size_in], &matrix);
        let mut perm: Vec<i64> = (0..rank as i64).filter(|&d| d != axis as i64).collect();
        perm.push(axis as i64);
        let mut inverse = vec![0i64; rank];
        for (i, &p) in perm.iter().enumerate() {
            inverse[p as usize] = i as i64;
        }
        let moved = ctx.emit("Transpose", &[&current], vec![("perm", Attr::Ints(perm))]);
        let back = ctx.emit("MatMul", &[&moved, &a], vec![]);
        current = ctx.emit("Transpose", &[&back], vec![("perm", Attr::Ints(inverse))]);
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
    // The identity's basis vectors are stacked along another axis, which the resize leaves alone.
    let stack = if axis == 0 { 1 } else { 0 };
    if rank < 2 {
        return Err(RuleError::new(n, "Resize of a 1-D tensor is not supported"));
    }
    let mut in_dims = vec![1i64; rank];
    in_dims[stack] = size_in;
    in_dims[axis] = size_in;
    let mut identity = vec![0f32; (size_in * size_in) as usize];
    for k in 0..size_in as usize {
        identity[k * size_in as usize + k] = 1.0;
    }
    let mut node = n.clone();
    node.name = Some("resize".into());
    node.input = vec!["x".into(), String::new(), String::new(), String::new()];
    node.output = vec!["y".into()];
    let mut initializers = Vec::new();
    match scale {
        Some(s) => {
            let mut sc = vec![1f32; rank];
            sc[axis] = s;
            initializers.push(float_tensor("scales", &[rank as i64], &sc));
            node.input[2] = "scales".into();
        }
        None => {
            let mut sz = in_dims.clone();
            sz[axis] = size_out;
            initializers.push(int64_tensor("sizes", &[rank as i64], &sz));
            node.input[3] = "sizes".into();
        }
    }
    while node.input.last().is_some_and(String::is_empty) {
        node.input.pop();
    }
    let model = ModelProto {
        ir_version: Some(8),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(opset),
        }],
        graph: Some(GraphProto {
            name: Some("resize_matrix".into()),
            node: vec![node],
            initializer: initializers,
            input: vec![value_info("x", data_type::FLOAT, Some(&in_dims))],
            output: vec![value_info("y", data_type::FLOAT, None)],
            ..Default::default()
        }),
        ..Default::default()
    };
    let shape: Vec<usize> = in_dims.iter().map(|&d| d as usize).collect();
    let outputs = runner
        .run_f32(&model, &[("x", shape, identity)])
        .map_err(|e| RuleError::new(n, format!("computing the Resize matrix failed: {e}")))?;
    let (out_shape, values) = outputs
        .into_iter()
        .next()
        .ok_or_else(|| RuleError::new(n, "the Resize matrix run gave no output"))?;
    if out_shape[axis] as i64 != size_out || out_shape[stack] as i64 != size_in {
        return Err(RuleError::new(
            n,
            format!("the Resize matrix run gave shape {out_shape:?}"),
        ));
    }
    // y[k (stack axis), o (resized axis)] = A[o, k]
    let (si, so) = (size_in as usize, size_out as usize);
    let mut a = vec![0f32; so * si];
    let stride_axis: usize = out_shape[axis + 1..].iter().product();
    let stride_stack: usize = out_shape[stack + 1..].iter().product();
    for k in 0..si {
        for o in 0..so {
            a[o * si + k] = values[k * stride_stack + o * stride_axis];
        }
    }
    Ok(a)
}
