//! Operators that are linear and separable by axis (Resize, Pad in its edge, reflect and wrap
//! modes): each axis's `[out, in]` matrix is read from ONNX Runtime at build time by running the
//! node itself on an identity (its basis vectors stacked along another axis), which reproduces the
//! runtime's index arithmetic exactly; the gradient applies each matrix's transpose along its axis.

use super::RuleError;
use crate::onnx::autodiff::{GradContext, GraphRunner};
use crate::onnx::builder::{model_of, value_info, Attr};
use crate::onnx::proto::{data_type, GraphProto, NodeProto, TensorProto};

/// The `[out, in]` matrix of `node` (whose data input is named `x`, other inputs given as
/// `initializers`) along `axis` of a rank-`rank` tensor, `size_in` long before and `size_out`
/// after. `n` names the forward node in errors.
#[allow(clippy::too_many_arguments)] // the node, its template and constants, the geometry, the opset
pub(super) fn matrix(
    runner: &dyn GraphRunner,
    n: &NodeProto,
    mut node: NodeProto,
    initializers: Vec<TensorProto>,
    rank: usize,
    (axis, size_in, size_out): (usize, i64, i64),
    opset: i64,
) -> Result<Vec<f32>, RuleError> {
    let op = n.op_type.clone().unwrap_or_default();
    if rank < 2 {
        return Err(RuleError::new(n, format!("{op} of a 1-D tensor is not supported")));
    }
    // The identity's basis vectors are stacked along another axis, which the node leaves alone.
    let stack = if axis == 0 { 1 } else { 0 };
    let mut in_dims = vec![1i64; rank];
    in_dims[stack] = size_in;
    in_dims[axis] = size_in;
    let si = size_in as usize;
    let mut identity = vec![0f32; si * si];
    for k in 0..si {
        identity[k * si + k] = 1.0;
    }
    node.name = Some("axis_matrix".into());
    node.output = vec!["y".into()];
    while node.input.last().is_some_and(String::is_empty) {
        node.input.pop();
    }
    let model = model_of(
        GraphProto {
            name: Some("axis_matrix".into()),
            node: vec![node],
            initializer: initializers,
            input: vec![value_info("x", data_type::FLOAT, Some(&in_dims))],
            output: vec![value_info("y", data_type::FLOAT, None)],
            ..Default::default()
        },
        opset,
    );
    let shape: Vec<usize> = in_dims.iter().map(|&d| d as usize).collect();
    let outputs = runner
        .run_f32(&model, &[("x", shape, identity)])
        .map_err(|e| RuleError::new(n, format!("computing the {op} matrix failed: {e}")))?;
    let (out_shape, values) = outputs
        .into_iter()
        .next()
        .ok_or_else(|| RuleError::new(n, format!("the {op} matrix run gave no output")))?;
    if out_shape.len() != rank || out_shape[axis] as i64 != size_out || out_shape[stack] as i64 != size_in {
        return Err(RuleError::new(
            n,
            format!("the {op} matrix run gave shape {out_shape:?}"),
        ));
    }
    // y[k (stack axis), o (the axis)] = A[o, k]
    let so = size_out as usize;
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

/// `g` with the `[out, in]` matrix `a`'s transpose applied along `axis` (moved last, multiplied,
/// moved back).
pub(super) fn apply_transposed(
    ctx: &mut GradContext,
    g: &str,
    rank: usize,
    axis: usize,
    a: (&[f32], i64, i64),
) -> String {
    let (values, size_out, size_in) = a;
    let a = ctx.const_f32("axis_matrix", &[size_out, size_in], values);
    let mut perm: Vec<i64> = (0..rank as i64).filter(|&d| d != axis as i64).collect();
    perm.push(axis as i64);
    let mut inverse = vec![0i64; rank];
    for (i, &p) in perm.iter().enumerate() {
        inverse[p as usize] = i as i64;
    }
    let moved = ctx.emit("Transpose", &[g], vec![("perm", Attr::Ints(perm))]);
    let back = ctx.emit("MatMul", &[&moved, &a], vec![]);
    ctx.emit("Transpose", &[&back], vec![("perm", Attr::Ints(inverse))])
}
