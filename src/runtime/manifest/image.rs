//! `[image]`: how an image is decoded, resized and normalised into the model's input tensor; what
//! the section leaves out is read from the input's shape.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{FieldError, ManifestError};
use crate::onnx::{Dim, TensorInfo};

/// The `[image]` section as written.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct ImageManifest {
    layout: Option<Layout>,
    width: Option<usize>,
    height: Option<usize>,
    color: Option<ColorOrder>,
    resize: Option<ResizeFilter>,
    fit: Option<Fit>,
    pad: Option<u8>,
    scale: Option<f32>,
    mean: Option<Vec<f32>>,
    std: Option<Vec<f32>>,
}

/// Tensor layout of an image input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum Layout {
    /// Batch, channels, height, width.
    NCHW,
    /// Batch, height, width, channels.
    NHWC,
}

/// Channel order the model expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ColorOrder {
    /// Red, green, blue.
    Rgb,
    /// Blue, green, red.
    Bgr,
    /// One luminance channel.
    Grayscale,
}

/// Interpolation used to resize images to the model's input size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ResizeFilter {
    /// Bilinear (triangle) filter.
    Bilinear,
    /// Nearest neighbour.
    Nearest,
}

/// How an image of another aspect ratio is fitted to the input size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Fit {
    /// Resize both axes to the input size.
    Stretch,
    /// Resize the shorter side to the input size, then crop the centre.
    CenterCrop,
    /// Resize the longer side to the input size, keeping the aspect ratio, and pad the rest with
    /// `pad` (as YOLO detectors are fed).
    Letterbox,
    /// A letterbox with the image at the top-left corner and the padding right and below, its
    /// scaled size rounded down: YOLOX's `preproc` (and the detectors exported from it).
    LetterboxTopLeft,
}

impl Fit {
    /// Whether the image is padded rather than cropped or stretched.
    pub fn pads(self) -> bool {
        matches!(self, Fit::Letterbox | Fit::LetterboxTopLeft)
    }
}

/// Preprocessing of an image model, resolved.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ImageSpec {
    /// Tensor layout.
    pub layout: Layout,
    /// Input width in pixels.
    pub width: usize,
    /// Input height in pixels.
    pub height: usize,
    /// Channel count (1 or 3).
    pub channels: usize,
    /// Channel order.
    pub color: ColorOrder,
    /// Resize filter.
    pub resize: ResizeFilter,
    /// Aspect-ratio handling.
    pub fit: Fit,
    /// The grey (0-255) a letterbox pads with (Ultralytics' 114 by default).
    pub pad: u8,
    /// Factor applied to 0-255 pixel values before normalisation.
    pub scale: f32,
    /// Per-channel mean subtracted after scaling.
    pub mean: Vec<f32>,
    /// Per-channel standard deviation divided by after subtracting the mean.
    pub std: Vec<f32>,
}

/// The grey a letterbox pads with when the manifest names none: Ultralytics' `LetterBox` default.
pub const DEFAULT_PAD: u8 = 114;

/// Completes the `[image]` section from the input's shape, where the graph declares one; `fit`
/// is the task's default fit (a detector's is a letterbox).
pub(super) fn resolve(
    m: ImageManifest,
    input: &TensorInfo,
    fit: Fit,
    err: &FieldError,
) -> Result<ImageSpec, ManifestError> {
    if m.pad.is_some() && !m.fit.unwrap_or(fit).pads() {
        return Err(err(
            "image.pad",
            "only a letterbox (fit = \"letterbox\" or \"letterbox-top-left\") pads".into(),
        ));
    }
    let shape: &[Dim] = input.shape.as_deref().unwrap_or_default();
    if shape.len() != 4 && !shape.is_empty() {
        return Err(err(
            "input",
            format!("an image input must be 4-D, this one has {} dimensions", shape.len()),
        ));
    }
    let layout = m.layout.unwrap_or_else(|| guess_layout(shape));
    let (c_axis, h_axis, w_axis) = match layout {
        Layout::NCHW => (1, 2, 3),
        Layout::NHWC => (3, 1, 2),
    };
    let from_graph = |axis: usize| shape.get(axis).and_then(Dim::fixed);
    let height = m
        .height
        .or(from_graph(h_axis))
        .ok_or_else(|| err("image.height", "missing, and not fixed in the graph".into()))?;
    let width = m
        .width
        .or(from_graph(w_axis))
        .ok_or_else(|| err("image.width", "missing, and not fixed in the graph".into()))?;
    for (field, given, axis) in [("image.height", m.height, h_axis), ("image.width", m.width, w_axis)] {
        if let (Some(g), Some(n)) = (given, from_graph(axis)) {
            if g != n {
                return Err(err(field, format!("{g} in the manifest, but the graph fixes {n}")));
            }
        }
    }
    let channels = channels(m.color, from_graph(c_axis), err)?;
    let color = m.color.unwrap_or(if channels == 1 {
        ColorOrder::Grayscale
    } else {
        ColorOrder::Rgb
    });
    let per_channel = |field: &str, v: Option<Vec<f32>>, default: f32| -> Result<Vec<f32>, ManifestError> {
        let v = v.unwrap_or_else(|| vec![default]);
        match v.len() {
            1 => Ok(vec![v[0]; channels]),
            n if n == channels => Ok(v),
            n => Err(err(field, format!("{n} values for {channels} channel(s)"))),
        }
    };
    let mean = per_channel("image.mean", m.mean, 0.0)?;
    let std = per_channel("image.std", m.std, 1.0)?;
    if std.iter().any(|s| *s == 0.0 || !s.is_finite()) {
        return Err(err("image.std", "values must be finite and non-zero".into()));
    }
    Ok(ImageSpec {
        layout,
        width,
        height,
        channels,
        color,
        resize: m.resize.unwrap_or(ResizeFilter::Bilinear),
        fit: m.fit.unwrap_or(fit),
        pad: m.pad.unwrap_or(DEFAULT_PAD),
        scale: m.scale.unwrap_or(1.0 / 255.0),
        mean,
        std,
    })
}

/// The layout a shape suggests: a second axis of 1 or 3 is NCHW's channels; else a last axis of 1
/// or 3 is NHWC's; else NCHW.
fn guess_layout(shape: &[Dim]) -> Layout {
    match (shape.get(1).and_then(Dim::fixed), shape.get(3).and_then(Dim::fixed)) {
        (Some(c), _) if c == 1 || c == 3 => Layout::NCHW,
        (_, Some(c)) if c == 1 || c == 3 => Layout::NHWC,
        _ => Layout::NCHW,
    }
}

/// The channel count the colour order implies (or the graph's, when no order is given), checked
/// against the graph's and against what preprocessing can feed (1 or 3).
fn channels(color: Option<ColorOrder>, graph: Option<usize>, err: &FieldError) -> Result<usize, ManifestError> {
    let channels = match (color, graph) {
        (Some(ColorOrder::Grayscale), _) => 1,
        (Some(_), _) => 3,
        (None, Some(c)) => c,
        (None, None) => 3,
    };
    if let Some(n) = graph.filter(|n| *n != channels) {
        return Err(err(
            "image.color",
            format!("{channels} channel(s) implied, but the graph has {n}"),
        ));
    }
    if channels != 1 && channels != 3 {
        return Err(err(
            "input",
            format!("{channels} channels: explaind feeds 1 (grayscale) or 3 (colour) channels"),
        ));
    }
    Ok(channels)
}
