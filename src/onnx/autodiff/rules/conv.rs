//! Convolutions: the input gradient of Conv is a ConvTranspose with the same geometry, and the
//! input gradient of ConvTranspose is a Conv.

use super::{first_only, grad0, input, only_input0, output, RuleError, RuleTable};
use crate::onnx::autodiff::GradContext;
use crate::onnx::builder::Attr;
use crate::onnx::node::{attr_int, attr_ints, attr_string};
use crate::onnx::proto::NodeProto;

pub(super) fn register(t: &mut RuleTable) {
    t.register("", "Conv", conv);
    t.register("", "ConvTranspose", conv_transpose);
}

type Grads = Result<Vec<Option<String>>, RuleError>;

/// Convolution geometry with explicit pads.
struct Geometry {
    kernel: Vec<i64>,
    strides: Vec<i64>,
    dilations: Vec<i64>,
    pads: Vec<i64>,
    group: i64,
}

/// Kernel, strides, dilations and group of a convolution (its pads come from the operator's rules).
struct Window {
    kernel: Vec<i64>,
    strides: Vec<i64>,
    dilations: Vec<i64>,
    group: i64,
}

fn window(ctx: &GradContext, n: &NodeProto, w: &str) -> Result<Window, RuleError> {
    let w_dims = ctx.dims(w)?;
    let spatial = w_dims.len().saturating_sub(2);
    let kernel = match attr_ints(n, "kernel_shape")? {
        Some(k) => k,
        None => w_dims[2..]
            .iter()
            .map(|d| d.ok_or_else(|| RuleError::new(n, "the kernel size is not static")))
            .collect::<Result<_, _>>()?,
    };
    Ok(Window {
        strides: attr_ints(n, "strides")?.unwrap_or_else(|| vec![1; spatial]),
        dilations: attr_ints(n, "dilations")?.unwrap_or_else(|| vec![1; spatial]),
        group: attr_int(n, "group", 1)?,
        kernel,
    })
}

fn geometry(
    ctx: &GradContext,
    n: &NodeProto,
    x: &str,
    w: &str,
    conv_input_dims: Option<&[Option<i64>]>,
) -> Result<Geometry, RuleError> {
    let Window {
        kernel,
        strides,
        dilations,
        group,
    } = window(ctx, n, w)?;
    let spatial = kernel.len();
    let auto_pad = attr_string(n, "auto_pad", "NOTSET")?;
    let pads = match auto_pad.as_str() {
        "NOTSET" => attr_ints(n, "pads")?.unwrap_or_else(|| vec![0; 2 * spatial]),
        "VALID" => vec![0; 2 * spatial],
        mode @ ("SAME_UPPER" | "SAME_LOWER") => {
            let dims =
                conv_input_dims.ok_or_else(|| RuleError::new(n, format!("auto_pad {mode} is not supported here")))?;
            let sizes: Option<Vec<i64>> = dims[2..2 + spatial].iter().copied().collect();
            let sizes = sizes
                .ok_or_else(|| RuleError::new(n, format!("auto_pad {mode} needs a static spatial size of `{x}`")))?;
            super::pool::same_pads(&sizes, &kernel, &strides, &dilations, mode == "SAME_UPPER")
        }
        other => return Err(RuleError::new(n, format!("auto_pad `{other}` is not supported"))),
    };
    Ok(Geometry {
        kernel,
        strides,
        dilations,
        pads,
        group,
    })
}

fn conv(ctx: &mut GradContext, n: &NodeProto, g: &[Option<String>], needs: &[bool]) -> Grads {
    only_input0(n, needs, "a Conv weight or bias")?;
    let g = grad0(n, g)?;
    let (x, w, y) = (input(n, 0), input(n, 1), output(n));
    let x_dims = ctx.dims(x)?.to_vec();
    let y_dims = ctx.dims(y)?.to_vec();
    let geo = geometry(ctx, n, x, w, Some(&x_dims))?;
    let spatial = geo.kernel.len();
    let (output_padding, exact) = output_padding(&geo, &x_dims, &y_dims);
    if output_padding
        .iter()
        .zip(&geo.strides)
        .zip(&geo.dilations)
        .any(|((p, s), d)| *p < 0 || (*p >= *s && *p >= *d))
    {
        return Err(RuleError::new(
            n,
            format!("cannot size the input gradient (output_padding {output_padding:?})"),
        ));
    }
    // Stride 1 with constant weights: a plain convolution with flipped, channel-swapped weights is
    // the same map and runs on ONNX Runtime's blocked (NCHWc) convolution kernels, which need a
    // multiple of 8 output channels; with fewer (a first layer's 1 or 3) ConvTranspose is faster.
    let channels = x_dims.get(1).copied().flatten().unwrap_or(0);
    if exact
        && channels % 8 == 0
        && channels > 0
        && geo.strides.iter().all(|s| *s == 1)
        && output_padding.iter().all(|p| *p == 0)
    {
        if let Some(dx) = flipped_conv(ctx, g, w, &geo)? {
            return Ok(first_only(n, dx));
        }
    }
    let dx = ctx.emit(
        "ConvTranspose",
        &[g, w],
        vec![
            ("kernel_shape", Attr::Ints(geo.kernel.clone())),
            ("strides", Attr::Ints(geo.strides.clone())),
            ("dilations", Attr::Ints(geo.dilations.clone())),
            ("pads", Attr::Ints(geo.pads.clone())),
            ("group", Attr::Int(geo.group)),
            ("output_padding", Attr::Ints(output_padding)),
        ],
    );
    let dx = if exact {
        dx
    } else {
        let shape = ctx.shape(x);
        let two = ctx.const_i64("two", &[2]);
        let big = ctx.const_i64("end", &[i64::MAX]);
        let sizes = ctx.emit("Slice", &[&shape, &two, &big], vec![]);
        let zeros = ctx.const_i64("starts", &vec![0; spatial]);
        let axes = ctx.const_i64("axes", &(2..2 + spatial as i64).collect::<Vec<_>>());
        ctx.emit("Slice", &[&dx, &zeros, &sizes, &axes], vec![])
    };
    Ok(first_only(n, dx))
}

/// The output_padding that makes the transposed convolution's output as large as x, and whether
/// it is exact. With static sizes it is; otherwise it is the largest allowed, and the result is
/// cut back to x's size.
fn output_padding(geo: &Geometry, x_dims: &[Option<i64>], y_dims: &[Option<i64>]) -> (Vec<i64>, bool) {
    let spatial = geo.kernel.len();
    let mut output_padding = Vec::with_capacity(spatial);
    let mut exact = true;
    for i in 0..spatial {
        match (
            x_dims.get(2 + i).copied().flatten(),
            y_dims.get(2 + i).copied().flatten(),
        ) {
            (Some(size), Some(out)) => {
                let produced = (out - 1) * geo.strides[i] - geo.pads[i] - geo.pads[spatial + i]
                    + geo.dilations[i] * (geo.kernel[i] - 1)
                    + 1;
                output_padding.push(size - produced);
            }
            _ => {
                exact = false;
                output_padding.push(geo.strides[i] - 1);
            }
        }
    }
    (output_padding, exact)
}

/// The input gradient of a stride-1 convolution as a convolution of `g` with the flipped weights,
/// when the weights are constant and the padding it needs is not negative.
fn flipped_conv(ctx: &mut GradContext, g: &str, w: &str, geo: &Geometry) -> Result<Option<String>, RuleError> {
    let Some(flipped) = flipped_weights(ctx, w, geo.group)? else {
        return Ok(None);
    };
    let spatial = geo.kernel.len();
    let reach: Vec<i64> = geo
        .kernel
        .iter()
        .zip(&geo.dilations)
        .map(|(k, d)| d * (k - 1))
        .collect();
    let pads: Vec<i64> = (0..2 * spatial).map(|i| reach[i % spatial] - geo.pads[i]).collect();
    if pads.iter().any(|p| *p < 0) {
        return Ok(None);
    }
    Ok(Some(ctx.emit(
        "Conv",
        &[g, &flipped],
        vec![
            ("kernel_shape", Attr::Ints(geo.kernel.clone())),
            ("dilations", Attr::Ints(geo.dilations.clone())),
            ("pads", Attr::Ints(pads)),
            ("group", Attr::Int(geo.group)),
        ],
    )))
}

/// For constant weights `W[M, C/g, k...]`, the weights `W'[C, M/g, k...]` of the convolution that
/// computes the input gradient: spatially flipped, input and output channels swapped per group.
fn flipped_weights(ctx: &mut GradContext, w: &str, group: i64) -> Result<Option<String>, RuleError> {
    let Some(values) = ctx.constant_floats(w) else {
        return Ok(None);
    };
    let Some(dims) = ctx.dims(w)?.iter().copied().collect::<Option<Vec<i64>>>() else {
        return Ok(None);
    };
    let (m, c_per_group) = (dims[0], dims[1]);
    let kernel: i64 = dims[2..].iter().product();
    let m_per_group = m / group;
    let mut out = vec![0f32; values.len()];
    for gi in 0..group {
        for mo in 0..m_per_group {
            for ci in 0..c_per_group {
                let src = ((gi * m_per_group + mo) * c_per_group + ci) * kernel;
                let dst = ((gi * c_per_group + ci) * m_per_group + mo) * kernel;
                for k in 0..kernel {
                    // Reversing the flat kernel index flips every spatial axis at once.
                    out[(dst + kernel - 1 - k) as usize] = values[(src + k) as usize];
                }
            }
        }
    }
    let mut new_dims = vec![c_per_group * group, m_per_group];
    new_dims.extend_from_slice(&dims[2..]);
    Ok(Some(ctx.const_f32("flipped_weights", &new_dims, &out)))
}

fn conv_transpose(ctx: &mut GradContext, n: &NodeProto, g: &[Option<String>], needs: &[bool]) -> Grads {
    only_input0(n, needs, "a ConvTranspose weight or bias")?;
    let g = grad0(n, g)?;
    let (x, w, y) = (input(n, 0), input(n, 1), output(n));
    let Window {
        kernel,
        strides,
        dilations,
        group,
    } = window(ctx, n, w)?;
    let spatial = kernel.len();
    let auto_pad = attr_string(n, "auto_pad", "NOTSET")?;
    let pads = if auto_pad == "NOTSET" && attr_ints(n, "output_shape")?.is_none() {
        attr_ints(n, "pads")?.unwrap_or_else(|| vec![0; 2 * spatial])
    } else {
        // output_shape or auto_pad: the pads follow from the sizes the probe saw.
        let output_padding = attr_ints(n, "output_padding")?.unwrap_or_else(|| vec![0; spatial]);
        let (x_dims, y_dims) = (ctx.dims(x)?.to_vec(), ctx.dims(y)?.to_vec());
        let mut pads = vec![0; 2 * spatial];
        for i in 0..spatial {
            let (Some(size), Some(out)) = (x_dims[2 + i], y_dims[2 + i]) else {
                return Err(RuleError::new(
                    n,
                    "ConvTranspose with output_shape or auto_pad needs static sizes",
                ));
            };
            let total = strides[i] * (size - 1) + output_padding[i] + (kernel[i] - 1) * dilations[i] + 1 - out;
            if total < 0 {
                // A larger output_shape appends rows at the end that do not depend on x: a negative
                // end pad marks them for cutting from the gradient below.
                pads[spatial + i] = total;
                continue;
            }
            let (half, rest) = (total / 2, total - total / 2);
            (pads[i], pads[spatial + i]) = if auto_pad == "SAME_UPPER" {
                (half, rest)
            } else {
                (rest, half)
            };
        }
        pads
    };
    // Negative pads (an output_shape beyond the natural size): those output rows do not depend on
    // x; cut them from the gradient instead.
    let g = if pads.iter().any(|p| *p < 0) {
        let y_dims = ctx.dims(y)?.to_vec();
        let mut starts = Vec::new();
        let mut ends = Vec::new();
        for i in 0..spatial {
            let out = y_dims[2 + i].ok_or_else(|| RuleError::new(n, "static sizes needed"))?;
            starts.push((-pads[i]).max(0));
            ends.push(out - (-pads[spatial + i]).max(0));
        }
        let starts = ctx.const_i64("starts", &starts);
        let ends = ctx.const_i64("ends", &ends);
        let axes = ctx.const_i64("axes", &(2..2 + spatial as i64).collect::<Vec<_>>());
        ctx.emit("Slice", &[g, &starts, &ends, &axes], vec![])
    } else {
        g.to_string()
    };
    let pads: Vec<i64> = pads.iter().map(|p| (*p).max(0)).collect();
    let dx = ctx.emit(
        "Conv",
        &[&g, w],
        vec![
            ("kernel_shape", Attr::Ints(kernel)),
            ("strides", Attr::Ints(strides)),
            ("dilations", Attr::Ints(dilations)),
            ("pads", Attr::Ints(pads)),
            ("group", Attr::Int(group)),
        ],
    );
    Ok(first_only(n, dx))
}
