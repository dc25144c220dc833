//! Pooling: MaxPool scatters the gradient to the indices of the maxima (asked of the forward node),
//! AveragePool spreads it with a transposed convolution of ones, the global pools broadcast it.
//! A tie gives the whole gradient to one position, the first maximum of its window in row-major
//! order: the index ONNX Runtime's MaxPool reports, and PyTorch's (whose autograd, and Captum's
//! DeepLIFT through it, route a tie so).

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
    let dx = unpool_max(ctx, n, &[g])?.pop();
    let dx = dx.ok_or_else(|| RuleError::new(n, "MaxPool gave no gradient"))?;
    Ok(first_only(n, dx))
}

/// Each of `grads` (gradients of MaxPool `n`'s output, of its shape) placed at its window's maximum
/// in `n`'s input, in order. The maxima are found once for all of them (DeepLIFT's rule routes two).
pub(super) fn unpool_max(ctx: &mut GradContext, n: &NodeProto, grads: &[&str]) -> Result<Vec<String>, RuleError> {
    let x = input(n, 0);
    if let Some(tiles) = Tiles::of(ctx, n)? {
        let Some(first) = grads.first() else {
            return Ok(Vec::new());
        };
        let mask = tiles.first_maxima(ctx, x, output(n), first);
        return Ok(grads.iter().map(|g| tiles.place(ctx, &mask, g)).collect());
    }
    if attr_int(n, "storage_order", 0)? != 0 {
        return Err(RuleError::new(
            n,
            "overlapping MaxPool with storage_order=1 is not supported",
        ));
    }
    // Indices are flat over the whole input tensor (N*C*H*W), so one scatter places every gradient.
    // ONNX Runtime's index is the window's first maximum in row-major order, as PyTorch's.
    let indices = ctx.forward_output(n, 1);
    let minus_one = ctx.const_i64("flat", &[-1]);
    let flat_i = ctx.emit("Reshape", &[&indices, &minus_one], vec![]);
    let zeros = zeros_like_flat(ctx, x);
    Ok(grads
        .iter()
        .map(|g| {
            let flat_g = ctx.emit("Reshape", &[g, &minus_one], vec![]);
            let scattered = ctx.emit(
                "ScatterElements",
                &[&zeros, &flat_i, &flat_g],
                vec![("axis", Attr::Int(0)), ("reduction", Attr::Str("add".into()))],
            );
            ctx.reshape_like(&scattered, x)
        })
        .collect())
}

/// The largest tile [`Tiles`] numbers (its numbers stay exact in f32 and their constant small);
/// larger tiles take the general path.
const MAX_TILE: i64 = 1 << 16;

/// MaxPool over non-overlapping tiles (kernel = stride, no padding), the common case: the gradient
/// goes to the tile's maximum, to the first in row-major order where several tie, as through the
/// Indices. Elementwise work and one more single-output MaxPool only, so the forward MaxPool keeps
/// its fast kernel (asking it for Indices makes ONNX Runtime fall back to a much slower one).
struct Tiles {
    kernel: Vec<i64>,
    /// The input's spatial sizes, and those the whole tiles cover.
    size: (i64, i64),
    covered: (i64, i64),
    /// `Resize` scales from a pooled map to the tiles.
    scales: String,
}

impl Tiles {
    /// The tiling of `n`, or None where `n` is not one.
    fn of(ctx: &mut GradContext, n: &NodeProto) -> Result<Option<Tiles>, RuleError> {
        let kernel = attr_ints(n, "kernel_shape")?.unwrap_or_default();
        let strides = attr_ints(n, "strides")?.unwrap_or_else(|| vec![1; kernel.len()]);
        let padded = attr_ints(n, "pads")?.is_some_and(|p| p.iter().any(|v| *v != 0))
            || !matches!(attr_string(n, "auto_pad", "NOTSET")?.as_str(), "NOTSET" | "VALID");
        let dilated = attr_ints(n, "dilations")?.is_some_and(|d| d.iter().any(|v| *v != 1));
        let dims = ctx.dims(input(n, 0))?.to_vec();
        if kernel.len() != 2
            || kernel.iter().any(|k| *k < 1)
            || kernel[0].checked_mul(kernel[1]).is_none_or(|area| area > MAX_TILE)
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
        let covered = (h / kernel[0] * kernel[0], w / kernel[1] * kernel[1]);
        let scales = ctx.const_f32("scales", &[4], &[1.0, 1.0, kernel[0] as f32, kernel[1] as f32]);
        Ok(Some(Tiles {
            kernel,
            size: (h, w),
            covered,
            scales,
        }))
    }

    /// A pooled map repeated over its tiles.
    fn upsample(&self, ctx: &mut GradContext, t: &str) -> String {
        ctx.emit(
            "Resize",
            &[t, "", &self.scales],
            vec![
                ("mode", Attr::Str("nearest".into())),
                ("coordinate_transformation_mode", Attr::Str("asymmetric".into())),
                ("nearest_mode", Attr::Str("floor".into())),
            ],
        )
    }

    /// 1 at each tile's first maximum in row-major order (the position PyTorch's and ONNX Runtime's
    /// max indices name), 0 elsewhere, over the tiles' cover of `x`, of `g`'s type; `y` is the
    /// pooled `x`.
    fn first_maxima(&self, ctx: &mut GradContext, x: &str, y: &str, g: &str) -> String {
        let (kh, kw) = (self.kernel[0], self.kernel[1]);
        let (th, tw) = self.covered;
        // Rows and columns past the last whole tile never reach the output.
        let x = if self.covered != self.size {
            let starts = ctx.const_i64("starts", &[0, 0]);
            let ends = ctx.const_i64("ends", &[th, tw]);
            let axes = ctx.const_i64("axes", &[2, 3]);
            ctx.emit("Slice", &[x, &starts, &ends, &axes], vec![])
        } else {
            x.to_string()
        };
        let y_up = self.upsample(ctx, y);
        let maxima = ctx.emit("Equal", &[&x, &y_up], vec![]);
        // Number the places in each tile K, K-1, ..., 1 in row-major order (K its size): the
        // largest number among the tile's maxima marks its first. A tile without a maximum (NaN
        // inputs) has largest 0, which no place matches, and gets no gradient.
        let area = kh * kw;
        let places: Vec<f32> = (0..area).map(|i| (area - i) as f32).collect();
        let places = ctx.const_f32("places", &[1, 1, kh, kw], &places);
        let repeats = ctx.const_i64("repeats", &[1, 1, th / kh, tw / kw]);
        let places = ctx.emit("Tile", &[&places, &repeats], vec![]);
        // Casts and products rather than Where, which ONNX Runtime runs several times slower.
        let maxima = ctx.emit("CastLike", &[&maxima, &places], vec![]);
        let numbered = ctx.emit("Mul", &[&maxima, &places], vec![]);
        let largest = ctx.emit(
            "MaxPool",
            &[&numbered],
            vec![
                ("kernel_shape", Attr::Ints(self.kernel.clone())),
                ("strides", Attr::Ints(self.kernel.clone())),
            ],
        );
        let largest = self.upsample(ctx, &largest);
        let first = ctx.emit("Equal", &[&places, &largest], vec![]);
        ctx.emit("CastLike", &[&first, g], vec![])
    }

    /// `g` (of the pooled map's shape) at the positions `mask` marks (1), zero elsewhere.
    fn place(&self, ctx: &mut GradContext, mask: &str, g: &str) -> String {
        let g_up = self.upsample(ctx, g);
        let dx = ctx.emit("Mul", &[mask, &g_up], vec![]);
        if self.covered == self.size {
            return dx;
        }
        let ((h, w), (th, tw)) = (self.size, self.covered);
        let pads = ctx.const_i64("pads", &[0, 0, 0, 0, 0, 0, h - th, w - tw]);
        ctx.emit("Pad", &[&dx, &pads], vec![])
    }
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

/// An AveragePool's window geometry, its padding resolved.
struct Window {
    kernel: Vec<i64>,
    strides: Vec<i64>,
    dilations: Vec<i64>,
    pads: Vec<i64>,
    ceil_mode: bool,
    include_pad: bool,
}

impl Window {
    fn of(ctx: &GradContext, n: &NodeProto) -> Result<Self, RuleError> {
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
                let sizes: Option<Vec<i64>> = ctx.dims(input(n, 0))?[2..].iter().copied().collect();
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
        Ok(Window {
            kernel,
            strides,
            dilations,
            pads,
            ceil_mode,
            include_pad,
        })
    }

    /// The attributes of a (transposed) convolution over this window with `pads`.
    fn attrs(&self, output_padding: Option<Vec<i64>>, pads: Vec<i64>) -> Vec<(&'static str, Attr)> {
        let mut a = vec![
            ("kernel_shape", Attr::Ints(self.kernel.clone())),
            ("strides", Attr::Ints(self.strides.clone())),
            ("dilations", Attr::Ints(self.dilations.clone())),
            ("pads", Attr::Ints(pads)),
        ];
        if let Some(op) = output_padding {
            a.push(("output_padding", Attr::Ints(op)));
        }
        a
    }
}

fn average_pool(ctx: &mut GradContext, n: &NodeProto, g: &[Option<String>], _: &[bool]) -> Grads {
    let g = grad0(n, g)?;
    let (x, y) = (input(n, 0), output(n));
    let window = Window::of(ctx, n)?;
    let spatial = window.kernel.len();
    let size: i64 = window.kernel.iter().product();
    let ones_kernel = {
        let mut dims = vec![1, 1];
        dims.extend(&window.kernel);
        ctx.const_f32("ones", &dims, &vec![1.0; size as usize])
    };

    // What each output was divided by.
    let padded = window.pads.iter().any(|p| *p != 0);
    let scaled = if window.include_pad || (!padded && !window.ceil_mode) {
        let k = ctx.scalar(size as f32);
        ctx.emit("Div", &[g, &k], vec![])
    } else {
        let counts = window_counts(ctx, &window, &ones_kernel, x, y);
        ctx.emit("Div", &[g, &counts], vec![])
    };
    // Spread each output's share over its window: channels folded into the batch, one kernel of ones.
    let y_sizes = spatial_shape(ctx, y);
    let lead = ctx.const_i64("lead", &[-1, 1]);
    let folded_shape = ctx.emit("Concat", &[&lead, &y_sizes], vec![("axis", Attr::Int(0))]);
    let folded = ctx.emit("Reshape", &[&scaled, &folded_shape], vec![]);
    let output_padding: Vec<i64> = window.strides.iter().map(|s| s - 1).collect();
    let spread = ctx.emit(
        "ConvTranspose",
        &[&folded, &ones_kernel],
        window.attrs(Some(output_padding), window.pads.clone()),
    );
    let x_sizes = spatial_shape(ctx, x);
    let zeros = ctx.const_i64("starts", &vec![0; spatial]);
    let axes = ctx.const_i64("axes", &(2..2 + spatial as i64).collect::<Vec<_>>());
    let cut = ctx.emit("Slice", &[&spread, &zeros, &x_sizes, &axes], vec![]);
    Ok(first_only(n, ctx.reshape_like(&cut, x)))
}

/// The number of input elements under each window (padding left out): a convolution of ones
/// over a map of ones. ceil_mode's extra windows come from extra padding at the end, cut back to
/// y's size.
fn window_counts(ctx: &mut GradContext, window: &Window, ones_kernel: &str, x: &str, y: &str) -> String {
    let spatial = window.kernel.len();
    let mut count_pads = window.pads.clone();
    if window.ceil_mode {
        for i in 0..spatial {
            count_pads[spatial + i] += window.strides[i] - 1;
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
    let counts = ctx.emit("Conv", &[&ones, ones_kernel], window.attrs(None, count_pads));
    let y_sizes = spatial_shape(ctx, y);
    let zeros = ctx.const_i64("starts", &vec![0; spatial]);
    let axes = ctx.const_i64("axes", &(2..2 + spatial as i64).collect::<Vec<_>>());
    ctx.emit("Slice", &[&counts, &zeros, &y_sizes, &axes], vec![])
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
    // The gradient goes to each channel's first maximum in row-major order (ArgMax's first index,
    // as PyTorch's adaptive max pooling, which exports as GlobalMaxPool).
    let g = grad0(n, g)?;
    let x = input(n, 0);
    let spatial = ctx.const_i64("spatial", &[0, 0, -1]);
    let flat = ctx.emit("Reshape", &[x, &spatial], vec![]);
    let first = ctx.emit(
        "ArgMax",
        &[&flat],
        vec![
            ("axis", Attr::Int(2)),
            ("keepdims", Attr::Int(1)),
            ("select_last_index", Attr::Int(0)),
        ],
    );
    let flat_g = ctx.emit("Reshape", &[g, &spatial], vec![]);
    let zeros_shape = ctx.shape(&flat);
    let zeros = ctx.emit(
        "ConstantOfShape",
        &[&zeros_shape],
        vec![("value", Attr::Tensor(Box::new(float_tensor("", &[1], &[0.0]))))],
    );
    let placed = ctx.emit(
        "ScatterElements",
        &[&zeros, &first, &flat_g],
        vec![("axis", Attr::Int(2))],
    );
    Ok(first_only(n, ctx.reshape_like(&placed, x)))
}
