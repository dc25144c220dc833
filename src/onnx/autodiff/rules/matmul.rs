//! Gemm and (batched, broadcast) MatMul.

use super::{grad0, input, output, RuleError, RuleTable};
use crate::onnx::autodiff::GradContext;
use crate::onnx::builder::Attr;
use crate::onnx::node::{attr_float, attr_int};
use crate::onnx::proto::NodeProto;

pub(super) fn register(t: &mut RuleTable) {
    t.register("", "Gemm", gemm);
    t.register("", "MatMul", matmul);
}

type Grads = Result<Vec<Option<String>>, RuleError>;

fn gemm(ctx: &mut GradContext, n: &NodeProto, g: &[Option<String>], needs: &[bool]) -> Grads {
    // Y = alpha * op(A) op(B) + beta * C
    let g = grad0(n, g)?;
    let (a, b) = (input(n, 0), input(n, 1));
    let alpha = attr_float(n, "alpha", 1.0)?;
    let beta = attr_float(n, "beta", 1.0)?;
    let trans_a = attr_int(n, "transA", 0)? != 0;
    let trans_b = attr_int(n, "transB", 0)? != 0;
    let mut out = vec![None; n.input.len()];
    if needs[0] {
        out[0] = Some(if !trans_a {
            // dA = alpha * G op(B)^T
            ctx.emit(
                "Gemm",
                &[g, b],
                vec![("alpha", Attr::Float(alpha)), ("transB", Attr::Int(!trans_b as i64))],
            )
        } else {
            // dA = alpha * op(B) G^T
            ctx.emit(
                "Gemm",
                &[b, g],
                vec![
                    ("alpha", Attr::Float(alpha)),
                    ("transA", Attr::Int(trans_b as i64)),
                    ("transB", Attr::Int(1)),
                ],
            )
        });
    }
    if needs[1] {
        out[1] = Some(if !trans_b {
            // dB = alpha * op(A)^T G
            ctx.emit(
                "Gemm",
                &[a, g],
                vec![("alpha", Attr::Float(alpha)), ("transA", Attr::Int(!trans_a as i64))],
            )
        } else {
            // dB = alpha * G^T op(A)
            ctx.emit(
                "Gemm",
                &[g, a],
                vec![
                    ("alpha", Attr::Float(alpha)),
                    ("transA", Attr::Int(1)),
                    ("transB", Attr::Int(trans_a as i64)),
                ],
            )
        });
    }
    if needs.get(2).copied().unwrap_or(false) {
        let scaled = if beta == 1.0 {
            g.to_string()
        } else {
            let s = ctx.scalar(beta);
            ctx.emit("Mul", &[g, &s], vec![])
        };
        out[2] = Some(ctx.unbroadcast(&scaled, output(n), input(n, 2))?);
    }
    Ok(out)
}

/// Swaps the last two axes of a tensor of rank `rank`.
fn transpose_last(ctx: &mut GradContext, x: &str, rank: usize) -> String {
    let mut perm: Vec<i64> = (0..rank as i64).collect();
    perm.swap(rank - 1, rank - 2);
    ctx.emit("Transpose", &[x], vec![("perm", Attr::Ints(perm))])
}

fn matmul(ctx: &mut GradContext, n: &NodeProto, g: &[Option<String>], needs: &[bool]) -> Grads {
    let g = grad0(n, g)?;
    let (a, b, y) = (input(n, 0), input(n, 1), output(n));
    let (a_dims, b_dims, y_dims) = (ctx.dims(a)?.to_vec(), ctx.dims(b)?.to_vec(), ctx.dims(y)?.to_vec());
    let (ra, rb) = (a_dims.len(), b_dims.len());
    // Vectors are promoted to matrices, as MatMul does; the final reshape to each input's shape
    // undoes the promotion.
    let mut g2 = g.to_string();
    let (a2, a2_dims) = if ra == 1 {
        g2 = ctx.unsqueeze(&g2, &[if rb == 1 { 0 } else { -2 }]);
        (ctx.unsqueeze(a, &[0]), vec![Some(1), a_dims[0]])
    } else {
        (a.to_string(), a_dims.clone())
    };
    let (b2, b2_dims) = if rb == 1 {
        g2 = ctx.unsqueeze(&g2, &[-1]);
        (ctx.unsqueeze(b, &[1]), vec![b_dims[0], Some(1)])
    } else {
        (b.to_string(), b_dims.clone())
    };
    let batch_rank = ra.max(2).max(rb.max(2)) - 2;
    let batch: Vec<Option<i64>> = y_dims.iter().take(batch_rank).copied().collect();
    let mut out = vec![None, None];
    if needs[0] {
        let bt = transpose_last(ctx, &b2, b2_dims.len());
        let ga = ctx.emit("MatMul", &[&g2, &bt], vec![]);
        let mut ga_dims = batch.clone();
        ga_dims.extend_from_slice(&a2_dims[a2_dims.len() - 2..]);
        out[0] = Some(ctx.unbroadcast_dims(&ga, &ga_dims, &a2_dims, a)?);
    }
    if needs[1] {
        let at = transpose_last(ctx, &a2, a2_dims.len());
        let gb = ctx.emit("MatMul", &[&at, &g2], vec![]);
        let mut gb_dims = batch;
        gb_dims.extend_from_slice(&b2_dims[b2_dims.len() - 2..]);
        out[1] = Some(ctx.unbroadcast_dims(&gb, &gb_dims, &b2_dims, b)?);
    }
    Ok(out)
}
