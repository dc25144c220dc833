//! Pooling: MaxPool scatters the gradient to the indices of the maxima (asked of the forward node),
//! AveragePool spreads it with a transposed convolution of ones, the global pools broadcast it.

use super::{first_only, grad0, input, output, RuleError, RuleTable};
use crate::onnx::autodiff::GradContext;
use crate::onnx::builder::{float_tensor, Attr};
use crate::onnx::node::{attr_int, attr_ints, attr_string};
use crate::onnx::proto::NodeProto;

pub(super) fn register(t: &mut RuleTable) {
    t.register("", "MaxPool", max_pool);
    t.register("", "AveragePool", average_pool);
    t.register("", "GlobalAveragePool", global_average_pool);
    t.register("", "GlobalMaxPool", global_max_pool);
}

type Grads = Result<Vec<Option<String>>, RuleError>;

pub(super) fn max_pool(ctx: &mut GradContext, n: &NodeProto, g: &[Option<String>], _: &[bool]) -> Grads {
    let g = grad0(n, g)?;
    let x = input(n, 0);
    if let Some(dx) = max_pool_tiled(ctx, n, g)? {
        return Ok(first_only(n, dx));
    }
    if attr_int(n, "storage_order", 0)? != 0 {
        return Err(RuleError::new(
            n,
            "overlapping MaxPool with storage_order=1 is not supported",
        ));
    }
    // Indices are flat over the whole input tensor (N*C*H*W), so one scatter places every gradient.
    let indices = ctx.forward_output(n, 1);
    let minus_one = ctx.const_i64("flat", &[-1]);
    let flat_i = ctx.emit("Reshape", &[&indices, &minus_one], vec![]);
    let flat_g = ctx.emit("Reshape", &[g, &minus_one], vec![]);
    let zeros = zeros_like_flat(ctx, x);
    let scattered = ctx.emit(
        "ScatterElements",
        &[&zeros, &flat_i, &flat_g],
        vec![("axis", Attr::Int(0)), ("reduction", Attr::Str("add".into()))],
    );
    Ok(first_only(n, ctx.reshape_like(&scattered, x)))
}

/// MaxPool over non-overlapping tiles (kernel = stride, no padding), the common case: the gradient
/// goes to the positions equal to their tile's maximum, split evenly between ties. Elementwise work
/// only, and the forward MaxPool keeps its fast single-output kernel (asking it for Indices makes
/// ONNX Runtime fall back to a much slower one).
fn max_pool_tiled(ctx: &mut GradContext, n: &NodeProto, g: &str) -> Result<Option<String>, RuleError> {
    let (x, y) = (input(n, 0), output(n));
    let kernel = attr_ints(n, "kernel_shape")?.unwrap_or_default();
    let strides = attr_ints(n, "strides")?.unwrap_or_else(|| vec![1; kernel.len()]);
    let padded = attr_ints(n, "pads")?.is_some_and(|p| p.iter().any(|v| *v != 0))
        || !matches!(attr_string(n, "auto_pad", "NOTSET")?.as_str(), "NOTSET" | "VALID");
    let dilated = attr_ints(n, "dilations")?.is_some_and(|d| d.iter().any(|v| *v != 1));
    let dims = ctx.dims(x)?.to_vec();
    if kernel.len() != 2
        || kernel != strides
        || padded
        || dilated
        || attr_int(n, "ceil_mode", 0)? != 0
        || dims.len() != 4
    {
        return Ok(None);
    }
    let (Some(h), Some(w)) = (dims[2], dims[3]) else {
        return Ok(None);
    };
    let (th, tw) = (h / kernel[0] * kernel[0], w / kernel[1] * kernel[1]);
    // Rows and columns past the last whole tile never reach the output.
    let cropped = th != h || tw != w;
    let xc = if cropped {
        let starts = ctx.const_i64("starts", &[0, 0]);
        let ends = ctx.const_i64("ends", &[th, tw]);
        let axes = ctx.const_i64("axes", &[2, 3]);
        ctx.emit("Slice", &[x, &starts, &ends, &axes], vec![])
    } else {
        x.to_string()
    };
    let scales = ctx.const_f32("scales", &[4], &[1.0, 1.0, kernel[0] as f32, kernel[1] as f32]);
    let upsample = |ctx: &mut GradContext, t: &str| {
        ctx.emit(
            "Resize",
            &[t, "", &scales],
            vec![
                ("mode", Attr::Str("nearest".into())),
                ("coordinate_transformation_mode", Attr::Str("asymmetric".into())),
                ("nearest_mode", Attr::Str("floor".into())),
            ],
        )
    };
    let y_up = upsample(ctx, y);
    let eq = ctx.emit("Equal", &[&xc, &y_up], vec![]);
    let mask = ctx.emit("CastLike", &[&eq, g], vec![]);
    // Ties per tile: the tile mean of the mask times the tile size.
    let share = ctx.emit(
        "AveragePool",
        &[&mask],
        vec![
            ("kernel_shape", Attr::Ints(kernel.clone())),
            ("strides", Attr::Ints(kernel.clone())),
        ],
    );
    let size = ctx.scalar((kernel[0] * kernel[1]) as f32);
    let ties = ctx.emit("Mul", &[&share, &size], vec![]);
    let g_share = ctx.emit("Div", &[g, &ties], vec![]);
    let g_up = upsample(ctx, &g_share);
    let dx = ctx.emit("Mul", &[&mask, &g_up], vec![]);
    Ok(Some(if cropped {
        let pads = ctx.const_i64("pads", &[0, 0, 0, 0, 0, 0, h - th, w - tw]);
        ctx.emit("Pad", &[&dx, &pads], vec![])
    } else {
        dx
    }))
}

/// Explicit pads for auto_pad SAME_UPPER / SAME_LOWER (output size = ceil(input / stride)); the
/// odd pixel goes at the end for SAME_UPPER and at the beginning for SAME_LOWER.
pub(super) fn same_pads(sizes: &[i64], kernel: &[i64], strides: &[i64], dilations: &[i64], upper: bool) -> Vec<i64> {
    let spatial = sizes.len();
    let mut pads = vec![0; 2 * spatial];
    for i in 0..spatial {
        let out = (sizes[i] + strides[i] - 1) / strides[i];
        let total = ((out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - sizes[i]).max(0);
        let (small, large) = (total / 2, total - total / 2);
        (pads[i], pads[spatial + i]) = if upper { (small, large) } else { (large, small) };
    }
    pads
}

/// A flat float zero tensor with as many elements as `x`.
fn zeros_like_flat(ctx: &mut GradContext, x: &str) -> String {
    let size = ctx.emit("Size", &[x], vec![]);
    let one = ctx.const_i64("one", &[1]);
    let size1 = ctx.emit("Reshape", &[&size, &one], vec![]);
    ctx.emit(
        "ConstantOfShape",
        &[&size1],
        vec![("value", Attr::Tensor(Box::new(float_tensor("", &[1], &[0.0]))))],
    )
}

/// `Shape(t)[2:]`.
fn spatial_shape(ctx: &mut GradContext, t: &str) -> String {
    let shape = ctx.shape(t);
    let two = ctx.const_i64("two", &[2]);
    let end = ctx.const_i64("end", &[i64::MAX]);
    ctx.emit("Slice", &[&shape, &two, &end], vec![])
}

fn average_pool(ctx: &mut GradContext, n: &NodeProto, g: &[Option<String>], _: &[bool]) -> Grads {
    let g = grad0(n, g)?;
    let (x, y) = (input(n, 0), output(n));
    let kernel = attr_ints(n, "kernel_shape")?.ok_or_else(|| RuleError::new(n, "kernel_shape is missing"))?;
    let spatial = kernel.len();
    let strides = attr_ints(n, "strides")?.unwrap_or_else(|| vec![1; spatial]);
    let dilations = attr_ints(n, "dilations")?.unwrap_or_else(|| vec![1; spatial]);
    let ceil_mode = attr_int(n, "ceil_mode", 0)? != 0;
    let include_pad = attr_int(n, "count_include_pad", 0)? != 0;
    let pads = match attr_string(n, "auto_pad", "NOTSET")?.as_str() {
        "NOTSET" => attr_ints(n, "pads")?.unwrap_or_else(|| vec![0; 2 * spatial]),
        "VALID" => vec![0; 2 * spatial],
        mode @ ("SAME_UPPER" | "SAME_LOWER") => {
            let sizes: Option<Vec<i64>> = ctx.dims(x)?[2..].iter().copied().collect();
            let sizes =
                sizes.ok_or_else(|| RuleError::new(n, format!("auto_pad {mode} needs static spatial sizes")))?;
            same_pads(&sizes, &kernel, &strides, &dilations, mode == "SAME_UPPER")
        }
        other => {
            return Err(RuleError::new(
                n,
                format!("AveragePool auto_pad `{other}` is not supported"),
            ))
        }
    };
    let window: i64 = kernel.iter().product();
    let ones_kernel = {
        let mut dims = vec![1, 1];
        dims.extend(&kernel);
        ctx.const_f32("ones", &dims, &vec![1.0; window as usize])
    };
    let geometry = |output_padding: Option<Vec<i64>>, pads: Vec<i64>| {
        let mut a = vec![
            ("kernel_shape", Attr::Ints(kernel.clone())),
            ("strides", Attr::Ints(strides.clone())),
            ("dilations", Attr::Ints(dilations.clone())),
            ("pads", Attr::Ints(pads)),
        ];
        if let Some(op) = output_padding {
            a.push(("output_padding", Attr::Ints(op)));
        }
        a
    };

    // What each output was divided by.
    let padded = pads.iter().any(|p| *p != 0);
    let scaled = if include_pad || (!padded && !ceil_mode) {
        let k = ctx.scalar(window as f32);
        ctx.emit("Div", &[g, &k], vec![])
    } else {
        // Count the input elements under each window: a convolution of ones over a map of ones.
        // ceil_mode's extra windows come from extra padding at the end, cut back to y's size.
        let mut count_pads = pads.clone();
        if ceil_mode {
            for i in 0..spatial {
                count_pads[spatial + i] += strides[i] - 1;
            }
        }
        let sizes = spatial_shape(ctx, x);
        let lead = ctx.const_i64("lead", &[1, 1]);
        let ones_shape = ctx.emit("Concat", &[&lead, &sizes], vec![("axis", Attr::Int(0))]);
        let ones = ctx.emit(
            "ConstantOfShape",
            &[&ones_shape],
            vec![("value", Attr::Tensor(Box::new(float_tensor("", &[1], &[1.0]))))],
        );
        let counts = ctx.emit("Conv", &[&ones, &ones_kernel], geometry(None, count_pads));
        let y_sizes = spatial_shape(ctx, y);
        let zeros = ctx.const_i64("starts", &vec![0; spatial]);
        let axes = ctx.const_i64("axes", &(2..2 + spatial as i64).collect::<Vec<_>>());
        let counts = ctx.emit("Slice", &[&counts, &zeros, &y_sizes, &axes], vec![]);
        ctx.emit("Div", &[g, &counts], vec![])
    };
    // Spread each output's share over its window: channels folded into the batch, one kernel of ones.
    let y_sizes = spatial_shape(ctx, y);
    let lead = ctx.const_i64("lead", &[-1, 1]);
    let folded_shape = ctx.emit("Concat", &[&lead, &y_sizes], vec![("axis", Attr::Int(0))]);
    let folded = ctx.emit("Reshape", &[&scaled, &folded_shape], vec![]);
    let output_padding: Vec<i64> = strides.iter().map(|s| s - 1).collect();
    let spread = ctx.emit(
        "ConvTranspose",
        &[&folded, &ones_kernel],
        geometry(Some(output_padding), pads),
    );
    let x_sizes = spatial_shape(ctx, x);
    let zeros = ctx.const_i64("starts", &vec![0; spatial]);
    let axes = ctx.const_i64("axes", &(2..2 + spatial as i64).collect::<Vec<_>>());
    let cut = ctx.emit("Slice", &[&spread, &zeros, &x_sizes, &axes], vec![]);
    Ok(first_only(n, ctx.reshape_like(&cut, x)))
}

fn global_average_pool(ctx: &mut GradContext, n: &NodeProto, g: &[Option<String>], _: &[bool]) -> Grads {
    let g = grad0(n, g)?;
    let x = input(n, 0);
    let dims = ctx.dims(x)?.to_vec();
    let count = if dims[2..].iter().all(Option::is_some) {
        ctx.scalar(dims[2..].iter().map(|d| d.unwrap_or(1)).product::<i64>() as f32)
    } else {
        let sizes = spatial_shape(ctx, x);
        let prod = ctx.emit("ReduceProd", &[&sizes], vec![("keepdims", Attr::Int(0))]);
        ctx.emit("CastLike", &[&prod, x], vec![])
    };
    let shape = ctx.shape(x);
    let spread = ctx.emit("Expand", &[g, &shape], vec![]);
    Ok(first_only(n, ctx.emit("Div", &[&spread, &count], vec![])))
}

fn global_max_pool(ctx: &mut GradContext, n: &NodeProto, g: &[Option<String>], _: &[bool]) -> Grads {
    // The gradient goes to the maxima, split evenly between ties.
    let g = grad0(n, g)?;
    let (x, y) = (input(n, 0), output(n));
    let rank = ctx.rank(x)? as i64;
    let eq = ctx.emit("Equal", &[x, y], vec![]);
    let mask = ctx.emit("CastLike", &[&eq, x], vec![]);
    let ties = ctx.reduce_sum(&mask, &(2..rank).collect::<Vec<_>>(), true);
    let share = ctx.emit("Div", &[g, &ties], vec![]);
    Ok(first_only(n, ctx.emit("Mul", &[&mask, &share], vec![])))
}
