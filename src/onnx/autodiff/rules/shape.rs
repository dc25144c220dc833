//! Operators that move, select or pad elements without arithmetic: their gradients move the
//! gradient back (reshape, inverse transpose, split for concat, pad for slice, scatter for gather).

use super::{first_only, grad0, input, output, RuleError, RuleTable};
use crate::onnx::autodiff::GradContext;
use crate::onnx::builder::{float_tensor, int64_tensor, Attr};
use crate::onnx::node::{attr_int, attr_ints, attr_string};
use crate::onnx::proto::NodeProto;

pub(super) fn register(t: &mut RuleTable) {
    for op in ["Flatten", "Reshape", "Squeeze", "Unsqueeze"] {
        t.register("", op, reshape_back);
    }
    t.register("", "Transpose", transpose);
    t.register("", "Concat", concat);
    t.register("", "Split", split);
    t.register("", "Slice", slice);
    t.register("", "Gather", gather);
    t.register("", "Pad", pad);
    t.register("", "Expand", expand);
}

type Grads = Result<Vec<Option<String>>, RuleError>;

fn reshape_back(ctx: &mut GradContext, n: &NodeProto, g: &[Option<String>], _: &[bool]) -> Grads {
    let g = grad0(n, g)?;
    Ok(first_only(n, ctx.reshape_like(g, input(n, 0))))
}

fn transpose(ctx: &mut GradContext, n: &NodeProto, g: &[Option<String>], _: &[bool]) -> Grads {
    let g = grad0(n, g)?;
    let rank = ctx.rank(input(n, 0))?;
    let perm = attr_ints(n, "perm")?.unwrap_or_else(|| (0..rank as i64).rev().collect());
    let mut inverse = vec![0i64; perm.len()];
    for (i, &p) in perm.iter().enumerate() {
        inverse[p as usize] = i as i64;
    }
    Ok(first_only(
        n,
        ctx.emit("Transpose", &[g], vec![("perm", Attr::Ints(inverse))]),
    ))
}

fn normalize_axis(axis: i64, rank: usize) -> i64 {
    if axis < 0 {
        axis + rank as i64
    } else {
        axis
    }
}

fn concat(ctx: &mut GradContext, n: &NodeProto, g: &[Option<String>], needs: &[bool]) -> Grads {
    let g = grad0(n, g)?;
    let rank = ctx.rank(output(n))?;
    let axis = normalize_axis(attr_int(n, "axis", 0)?, rank);
    // Each input's extent along the axis: static when known, else read from its shape.
    let mut static_sizes = Vec::new();
    for i in &n.input {
        static_sizes.push(ctx.dims(i)?[axis as usize]);
    }
    let sizes = if static_sizes.iter().all(Option::is_some) {
        ctx.const_i64(
            "sizes",
            &static_sizes.iter().map(|s| s.unwrap_or(0)).collect::<Vec<_>>(),
        )
    } else {
        let idx = ctx.const_i64("axis", &[axis]);
        let mut parts = Vec::new();
        for i in &n.input.clone() {
            let shape = ctx.shape(i);
            parts.push(ctx.emit("Gather", &[&shape, &idx], vec![("axis", Attr::Int(0))]));
        }
        let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
        ctx.emit("Concat", &refs, vec![("axis", Attr::Int(0))])
    };
    let pieces = ctx.emit_multi("Split", &[g, &sizes], n.input.len(), vec![("axis", Attr::Int(axis))]);
    Ok(pieces
        .into_iter()
        .zip(needs)
        .map(|(p, need)| need.then_some(p))
        .collect())
}

fn split(ctx: &mut GradContext, n: &NodeProto, g: &[Option<String>], _: &[bool]) -> Grads {
    let rank = ctx.rank(input(n, 0))?;
    let axis = normalize_axis(attr_int(n, "axis", 0)?, rank);
    let mut parts = Vec::new();
    for (slot, out) in n.output.iter().enumerate() {
        parts.push(match g.get(slot).cloned().flatten() {
            Some(gi) => gi,
            None => {
                // An output off the path contributes zeros of its shape.
                let shape = ctx.shape(out);
                ctx.emit(
                    "ConstantOfShape",
                    &[&shape],
                    vec![("value", Attr::Tensor(Box::new(float_tensor("", &[1], &[0.0]))))],
                )
            }
        });
    }
    let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
    Ok(first_only(
        n,
        ctx.emit("Concat", &refs, vec![("axis", Attr::Int(axis))]),
    ))
}

fn constant_input(ctx: &GradContext, n: &NodeProto, i: usize, what: &str) -> Result<Option<Vec<i64>>, RuleError> {
    let name = input(n, i);
    if name.is_empty() {
        return Ok(None);
    }
    ctx.constant_ints(name)
        .map(Some)
        .ok_or_else(|| RuleError::new(n, format!("Slice {what} must be constants")))
}

fn slice(ctx: &mut GradContext, n: &NodeProto, g: &[Option<String>], _: &[bool]) -> Grads {
    let g = grad0(n, g)?;
    let x = input(n, 0);
    let dims = ctx.dims(x)?.to_vec();
    let rank = dims.len();
    let starts = constant_input(ctx, n, 1, "starts")?.unwrap_or_default();
    let ends = constant_input(ctx, n, 2, "ends")?.unwrap_or_default();
    let axes = constant_input(ctx, n, 3, "axes")?.unwrap_or_else(|| (0..starts.len() as i64).collect());
    let steps = constant_input(ctx, n, 4, "steps")?.unwrap_or_else(|| vec![1; starts.len()]);
    let mut pads = vec![0i64; 2 * rank];
    let mut strided: Vec<(usize, i64, i64, i64)> = Vec::new();
    for k in 0..starts.len() {
        let axis = normalize_axis(axes[k], rank) as usize;
        let (start, end, step) = (starts[k], ends[k], steps[k]);
        match dims[axis] {
            Some(dim) => {
                let clamp = |v: i64, lo: i64, hi: i64| v.clamp(lo, hi);
                let norm = |v: i64| if v < 0 { v + dim } else { v };
                if step == 1 {
                    let s = clamp(norm(start), 0, dim);
                    let e = clamp(norm(end), 0, dim).max(s);
                    pads[axis] = s;
                    pads[rank + axis] = dim - e;
                } else {
                    strided.push((axis, start, end, step));
                }
            }
            None if step == 1 && start >= 0 && end >= i32::MAX as i64 => pads[axis] = start,
            None => {
                return Err(RuleError::new(
                    n,
                    format!("slicing axis {axis} needs its size to be static"),
                ));
            }
        }
    }
    // Strided slices first (innermost), then the contiguous ones by padding.
    let mut current = g.to_string();
    for (axis, start, end, step) in strided {
        current = strided_back(ctx, &current, rank, axis, dims[axis].unwrap_or(0), start, end, step);
    }
    if pads.iter().any(|p| *p != 0) {
        let pads = ctx.const_i64("pads", &pads);
        current = ctx.emit("Pad", &[&current, &pads], vec![]);
    }
    Ok(first_only(n, current))
}

/// Places the gradient of a strided slice along `axis` (size `dim`) back, with a one-hot matrix.
#[allow(clippy::too_many_arguments)]
fn strided_back(
    ctx: &mut GradContext,
    g: &str,
    rank: usize,
    axis: usize,
    dim: i64,
    start: i64,
    end: i64,
    step: i64,
) -> String {
    // The positions the slice picked, as ONNX Slice defines them.
    let (mut s, mut e) = (start, end);
    if s < 0 {
        s += dim;
    }
    if e < 0 {
        e += dim;
    }
    let positions: Vec<i64> = if step > 0 {
        let (s, e) = (s.clamp(0, dim), e.clamp(0, dim));
        (s..e).step_by(step as usize).collect()
    } else {
        let (s, e) = (s.clamp(-1, dim - 1), e.clamp(-1, dim - 1));
        let mut v = Vec::new();
        let mut p = s;
        while p > e {
            v.push(p);
            p += step;
        }
        v
    };
    let len = positions.len();
    let mut onehot = vec![0f32; len * dim as usize];
    for (j, p) in positions.iter().enumerate() {
        onehot[j * dim as usize + *p as usize] = 1.0;
    }
    let m = ctx.const_f32("select", &[len as i64, dim], &onehot);
    // Move the axis last, multiply by the [len, dim] matrix, and move it back.
    let mut perm: Vec<i64> = (0..rank as i64).filter(|&a| a != axis as i64).collect();
    perm.push(axis as i64);
    let mut inverse = vec![0i64; rank];
    for (i, &p) in perm.iter().enumerate() {
        inverse[p as usize] = i as i64;
    }
    let moved = ctx.emit("Transpose", &[g], vec![("perm", Attr::Ints(perm))]);
    let placed = ctx.emit("MatMul", &[&moved, &m], vec![]);
    ctx.emit("Transpose", &[&placed], vec![("perm", Attr::Ints(inverse))])
}

fn gather(ctx: &mut GradContext, n: &NodeProto, g: &[Option<String>], _: &[bool]) -> Grads {
    // Scatter-add the gradient rows back to where they were gathered from (repeated indices add up).
    let g = grad0(n, g)?;
    let (data, indices) = (input(n, 0), input(n, 1));
    let rank = ctx.rank(data)?;
    let irank = ctx.rank(indices)?;
    let axis = normalize_axis(attr_int(n, "axis", 0)?, rank) as usize;
    // Bring the gathered axis to the front of data, and the index axes to the front of g.
    let data_perm: Vec<i64> = std::iter::once(axis as i64)
        .chain((0..rank as i64).filter(|&a| a != axis as i64))
        .collect();
    let g_perm: Vec<i64> = (axis..axis + irank)
        .chain(0..axis)
        .chain(axis + irank..rank - 1 + irank)
        .map(|a| a as i64)
        .collect();
    let mut data_inverse = vec![0i64; rank];
    for (i, &p) in data_perm.iter().enumerate() {
        data_inverse[p as usize] = i as i64;
    }
    let moved_axis = axis != 0;
    let data_t = if moved_axis {
        ctx.emit("Transpose", &[data], vec![("perm", Attr::Ints(data_perm))])
    } else {
        data.to_string()
    };
    let g_t = if moved_axis && irank > 0 {
        ctx.emit("Transpose", &[g], vec![("perm", Attr::Ints(g_perm))])
    } else {
        g.to_string()
    };
    // Negative indices count from the end.
    let idx64 = ctx.emit("Cast", &[indices], vec![("to", Attr::Int(7))]);
    let shape = ctx.shape(data);
    // Scalars, so that 0-d indices stay 0-d.
    let axis_idx = ctx.scalar_i64("axis", axis as i64);
    let dim = ctx.emit("Gather", &[&shape, &axis_idx], vec![("axis", Attr::Int(0))]);
    let zero = ctx.scalar_i64("zero", 0);
    let negative = ctx.emit("Less", &[&idx64, &zero], vec![]);
    let wrapped = ctx.emit("Add", &[&idx64, &dim], vec![]);
    let idx = ctx.emit("Where", &[&negative, &wrapped, &idx64], vec![]);
    let idx = ctx.unsqueeze(&idx, &[-1]);
    let data_t_shape = ctx.emit("Shape", &[&data_t], vec![]);
    let zeros = ctx.emit(
        "ConstantOfShape",
        &[&data_t_shape],
        vec![("value", Attr::Tensor(Box::new(float_tensor("", &[1], &[0.0]))))],
    );
    let scattered = ctx.emit(
        "ScatterND",
        &[&zeros, &idx, &g_t],
        vec![("reduction", Attr::Str("add".into()))],
    );
    let dx = if moved_axis {
        ctx.emit("Transpose", &[&scattered], vec![("perm", Attr::Ints(data_inverse))])
    } else {
        scattered
    };
    Ok(first_only(n, dx))
}

fn pad(ctx: &mut GradContext, n: &NodeProto, g: &[Option<String>], needs: &[bool]) -> Grads {
    if needs.iter().skip(1).any(|x| *x) {
        return Err(RuleError::new(
            n,
            "a Pad constant value that depends on the input is not supported",
        ));
    }
    let mode = attr_string(n, "mode", "constant")?;
    let g = grad0(n, g)?;
    let (x, y) = (input(n, 0), output(n));
    let rank = ctx.rank(x)?;
    let pads = input(n, 1);
    let axes = match input(n, 3) {
        "" => None,
        name => Some(
            ctx.folded_ints(name)
                .ok_or_else(|| RuleError::new(n, "Pad's axes must be computable from constants"))?,
        ),
    };
    // Per-axis (begin, end), when the pads can be computed now (converters often compute them).
    let per_axis: Option<Vec<(i64, i64)>> = match ctx.folded_ints(pads) {
        Some(values) => Some(pad_pairs(n, &values, axes.as_deref(), rank)?),
        None => None,
    };
    // Zero padding of a constant: the gradient is the interior, sliced out (pads may be dynamic).
    if mode == "constant"
        && axes.is_none()
        && per_axis
            .as_ref()
            .is_none_or(|p| p.iter().all(|(b, e)| *b >= 0 && *e >= 0))
    {
        let zero = ctx.const_i64("zero", &[0]);
        let r = ctx.const_i64("rank", &[rank as i64]);
        let begins = ctx.emit("Slice", &[pads, &zero, &r], vec![]);
        let shape = ctx.shape(x);
        let ends = ctx.emit("Add", &[&begins, &shape], vec![]);
        return Ok(first_only(n, ctx.emit("Slice", &[g, &begins, &ends], vec![])));
    }
    // Other modes (edge, reflect, wrap) and cropping: linear and separable by axis, so each padded
    // axis's matrix comes from running the node on an identity.
    let per_axis = per_axis.ok_or_else(|| {
        RuleError::new(
            n,
            format!("Pad mode `{mode}` needs pads computable from constants when the graph is built"),
        )
    })?;
    let runner = ctx
        .runner()
        .ok_or_else(|| RuleError::new(n, "Pad gradients need a build-time runner"))?;
    let (x_dims, y_dims) = (ctx.dims(x)?.to_vec(), ctx.dims(y)?.to_vec());
    let mut current = g.to_string();
    for (axis, &(begin, end)) in per_axis.iter().enumerate() {
        if begin == 0 && end == 0 {
            continue;
        }
        let (Some(size_in), Some(size_out)) = (x_dims[axis], y_dims[axis]) else {
            return Err(RuleError::new(
                n,
                format!("Pad mode `{mode}` needs static sizes; axis {axis} is dynamic"),
            ));
        };
        let mut one = vec![0i64; 2 * rank];
        (one[axis], one[rank + axis]) = (begin, end);
        let mut node = n.clone();
        node.input = vec!["x".into(), "pads".into()];
        let initializers = vec![int64_tensor("pads", &[2 * rank as i64], &one)];
        let matrix = super::axis::matrix(
            runner,
            n,
            node,
            initializers,
            rank,
            (axis, size_in, size_out),
            ctx.opset(),
        )?;
        current = super::axis::apply_transposed(ctx, &current, rank, axis, (&matrix, size_out, size_in));
    }
    Ok(first_only(n, current))
}

/// Pad's `pads` (all begins, then all ends; for the listed `axes` only when given) as (begin, end)
/// per axis of a rank-`rank` tensor.
fn pad_pairs(n: &NodeProto, pads: &[i64], axes: Option<&[i64]>, rank: usize) -> Result<Vec<(i64, i64)>, RuleError> {
    let axes: Vec<usize> = match axes {
        None => (0..rank).collect(),
        Some(a) => a
            .iter()
            .map(|&ax| {
                let ax = if ax < 0 { ax + rank as i64 } else { ax };
                usize::try_from(ax)
                    .ok()
                    .filter(|ax| *ax < rank)
                    .ok_or_else(|| RuleError::new(n, format!("Pad axis {ax} is out of range")))
            })
            .collect::<Result<_, _>>()?,
    };
    if pads.len() != 2 * axes.len() {
        return Err(RuleError::new(
            n,
            format!("Pad has {} pads for {} axes", pads.len(), axes.len()),
        ));
    }
    let mut out = vec![(0, 0); rank];
    for (i, &ax) in axes.iter().enumerate() {
        out[ax] = (pads[i], pads[axes.len() + i]);
    }
    Ok(out)
}

fn expand(ctx: &mut GradContext, n: &NodeProto, g: &[Option<String>], _: &[bool]) -> Grads {
    let g = grad0(n, g)?;
    Ok(first_only(n, ctx.unbroadcast(g, output(n), input(n, 0))?))
}
