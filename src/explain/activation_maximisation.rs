//! Activation maximisation (Erhan et al. 2009; Simonyan et al. 2014) with the natural-image priors
//! of Olah et al. 2017 (Feature Visualization), as lucent (greentfrapp/lucent, the PyTorch port of
//! Lucid) renders it: the image a class's logit, or a channel's mean activation at a layer, is
//! largest for, found by gradient ascent on an image parametrised in a decorrelated Fourier basis,
//! seen through random jitter, scale and rotation at every step.
//!
//! Lucent's defaults, kept here (lucent `optvis/render.py`, `param/spatial.py`, `param/color.py`,
//! `transform.py`): Adam with learning rate 0.05 (`render_vis`), 512 iterations (`thresholds=(512,)`);
//! `fft_image`: spectrum initialised N(0, 0.01), scaled by `1 / max(|f|, 1 / max(w, h))`
//! (`decay_power = 1`), `irfftn(norm="ortho")`, divided by 4; `to_valid_rgb(decorrelate=True)`:
//! the colour matrix `color_correlation_svd_sqrt` normalised by its largest column norm, then a
//! sigmoid; `standard_transforms`: pad 12 (constant 0.5), jitter 8, scale in 0.90..1.10 (11
//! steps), rotate -10..10 degrees (0 five more times), jitter 4 - distances in pixels of a 224
//! image, scaled here to the model's input side (jitter at least 2, as lucent asserts).
//!
//! Every gradient of the model comes from explaind's backward graphs: the input gradient of the
//! target logit (or, for a channel, of `sum(layer * weights)` with weights `1 / positions` on the
//! channel, a graph seeded at the layer). The parametrisation, the colour matrix, the sigmoid, the
//! transforms (one bilinear affine resampling, constant 0.5 outside, as after lucent's padding)
//! and the penalties are differentiated here, by hand, around that gradient. Same seed, same bytes.

use std::sync::Arc;

use base64::Engine;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use realfft::{ComplexToReal, RealFftPlanner, RealToComplex};
use rustfft::num_complex::Complex;
use rustfft::{Fft, FftPlanner};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::channel_attribution::check_channel;
use super::grad_cam::plan_layer;
use super::method::{
    bytes, check_range, mul, schemas_of, Capabilities, Cost, Inputs, Invalid, Method, NamedSchemas, Passes, PlanContext,
};
use super::{one_hot, Cx, ExplainJob, TargetAttribution};
use crate::onnx::autodiff::RuleSet;
use crate::runtime::manifest::{ColorOrder, ImageSpec, Layout};
use crate::runtime::predict::Prediction;
use crate::runtime::preprocess::InputError;
use crate::runtime::tensor::TensorData;
use crate::runtime::{LoadedModel, RuntimeError, Tensor};

/// Most iterations one request may ask (the service's `max_samples` may lower it).
pub const MAX_ITERATIONS: usize = 4096;
/// Most pixels of a model input this method optimises (each iteration synthesises, views and
/// differentiates a whole image; 256 x 256 holds ImageNet's 224 x 224).
pub const MAX_PIXELS: usize = 256 * 256;

/// Lucid's colour correlation (square root of the ImageNet colours' covariance, by SVD), rows RGB.
const COLOR_CORRELATION_SVD_SQRT: [[f32; 3]; 3] = [[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]];
/// lucent's `magic`: the synthesised image is divided by it ("reduces saturation").
const MAGIC: f32 = 4.0;

/// Where the optimisation starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Start {
    /// Seeded noise in the Fourier basis (lucent's `sd = 0.01`): the request's image, which may
    /// be left out, only chooses the default target (without one, the mid-grey image the
    /// optimisation starts from chooses it).
    Noise,
    /// The request's image: the Fourier image is added to it (before the sigmoid).
    Input,
}

/// Activation maximisation parameters (defaults as lucent's).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ActivationMaximisationParams {
    /// Maximise this channel's mean activation at `layer` rather than the target's logit.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 65535)]
    pub channel: Option<usize>,
    /// The 4-D layer `channel` is in; default: the last spatial layer (as Grad-CAM picks it).
    /// Only read with `channel`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layer: Option<String>,
    /// Gradient steps (lucent's `thresholds=(512,)`); one backward row each.
    #[schema(default = 512, minimum = 1, maximum = 4096)]
    pub iterations: usize,
    /// Adam's learning rate (lucent's 0.05).
    #[schema(default = 0.05, exclusive_minimum = 0.0, maximum = 10.0)]
    pub learning_rate: f32,
    /// Start from seeded noise or from the request's image.
    #[schema(default = "noise")]
    pub start: Start,
    /// Jitter, scale and rotate the image at every step (lucent's `standard_transforms`).
    #[schema(default = true)]
    pub transforms: bool,
    /// Weight of the total-variation penalty (sum of absolute differences of neighbouring pixels,
    /// lucent's `total_variation`), on the image in [0, 1].
    #[schema(default = 0.0, minimum = 0.0, maximum = 1000.0)]
    pub total_variation: f32,
    /// Weight of the L2 penalty (lucent's `L2`: the image's Euclidean norm, `sqrt(1e-6 + sum x^2)`),
    /// on the image in [0, 1]: it darkens what the objective does not need.
    #[schema(default = 0.0, minimum = 0.0, maximum = 1000.0)]
    pub l2: f32,
}

impl Default for ActivationMaximisationParams {
    fn default() -> Self {
        Self {
            channel: None,
            layer: None,
            iterations: 512,
            learning_rate: 0.05,
            start: Start::Noise,
            transforms: true,
            total_variation: 0.0,
            l2: 0.0,
        }
    }
}

/// What activation maximisation answers in `details`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ActivationMaximisationDetails {
    /// `class` (the target's logit) or `channel` (a channel's mean activation at `layer`).
    pub objective: String,
    /// The layer, for a channel.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layer: Option<String>,
    /// The channel.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel: Option<usize>,
    /// The objective before the first step, on the untransformed image.
    pub initial_score: f64,
    /// The objective after the last step, on the untransformed image.
    pub final_score: f64,
    /// The objective at every step, on that step's transformed image (before its update).
    pub curve: Vec<f64>,
    /// The image, PNG at the model's input size, base64.
    pub image_png: String,
    /// Its `[height, width]`.
    pub image_shape: Vec<usize>,
}

/// Activation maximisation.
pub struct ActivationMaximisation;

impl Method for ActivationMaximisation {
    type Params = ActivationMaximisationParams;
    const NAME: &'static str = "activation-maximisation";
    const SUMMARY: &'static str = "The image a class's logit or a channel's mean activation is largest for: gradient \
                                   ascent in a decorrelated Fourier basis with jitter, scale and rotation (Olah et \
                                   al. 2017, lucent's defaults)";
    const CAPABILITIES: Capabilities = Capabilities {
        passes: Passes::Gradients,
        inputs: Inputs::Image,
        // Its `layer` names a channel objective's layer, not a map's (it answers an image).
        layer: false,
        random: true,
        examples: false,
        decision: false,
        text: false,
        makes_image: true,
    };

    fn plan(p: &mut ActivationMaximisationParams, cx: &PlanContext) -> Result<Cost, Invalid> {
        // Its own bound here (400); `max_samples` bounds iterations x images as every plan's samples.
        check_range("iterations", p.iterations, 1, MAX_ITERATIONS)?;
        if let Some(c) = p.channel {
            check_range("channel", c, 0, super::channel_attribution::MAX_CHANNEL)?;
        }
        if !(p.learning_rate > 0.0 && p.learning_rate <= 10.0) {
            return Err(Invalid::Request(format!(
                "params.learning_rate must be above 0 and at most 10, got {}",
                p.learning_rate
            )));
        }
        check_range("total_variation", p.total_variation, 0.0, 1000.0)?;
        check_range("l2", p.l2, 0.0, 1000.0)?;
        let pixels = cx.pixels();
        if pixels > MAX_PIXELS {
            return Err(Invalid::Model(format!(
                "activation maximisation optimises images of at most {MAX_PIXELS} pixels; model `{}` takes {pixels}",
                cx.model.name
            )));
        }
        // The layer only matters for a channel; a layer asked without one is still checked.
        let images = match p.channel {
            Some(_) => {
                let size = plan_layer(&mut p.layer, cx)?;
                check_channel(p.channel, size.channels, p.layer.as_deref().unwrap_or_default())?;
                1
            }
            None => {
                if p.layer.is_some() {
                    plan_layer(&mut p.layer, cx)?;
                }
                cx.targets
            }
        };
        let samples = mul(p.iterations, images, "iterations x targets")?;
        // Per image: the spectrum, its gradient and Adam's two moments (f32, real and
        // imaginary), the images on the way (a handful of copies, two of them framed), the
        // view's taps (an index and two fractions per pixel), the FFTs' column buffer and
        // scratch, and the curve.
        let channels = cx.model.spec.image.as_ref().map_or(1, |i| i.channels);
        let (h, w) = cx.model.spec.image.as_ref().map_or((1, 1), |i| (i.height, i.width));
        let spectrum = channels.saturating_mul(h).saturating_mul(w / 2 + 1).saturating_mul(2);
        let working = bytes(spectrum, 4 * 4)
            .saturating_add(bytes(channels.saturating_mul(pixels), 4 * 8))
            .saturating_add(bytes(pixels, 4 * 3))
            .saturating_add(bytes(spectrum, 8))
            .saturating_add(bytes(p.iterations, 8));
        Ok(Cost {
            samples,
            // Each image: its steps, one forward row before and one after, and for a channel one
            // forward row that reads the layer's shape.
            rows: samples.saturating_add(images.saturating_mul(2 + usize::from(p.channel.is_some()))),
            bytes: cx
                .batch_bytes(1, true)
                .saturating_add(working.saturating_mul(images as u64))
                .saturating_add(cx.answer_bytes()),
        })
    }

    fn explain(
        cx: &mut Cx,
        job: &ExplainJob,
        p: &ActivationMaximisationParams,
        targets: &[Prediction],
        _: &[f64],
    ) -> Result<Vec<TargetAttribution>, RuntimeError> {
        let spec = job.image_spec(Self::NAME)?.clone();
        let images: &[Prediction] = match p.channel {
            Some(_) => &targets[..targets.len().min(1)],
            None => targets,
        };
        let objective = match (p.channel, &p.layer) {
            (Some(channel), Some(layer)) => Some(ChannelObjective::find(cx, job, layer, channel)?),
            _ => None,
        };
        let mut out = Vec::with_capacity(images.len());
        for (i, target) in images.iter().enumerate() {
            let seed = job.seed.wrapping_add(i as u64);
            let run = optimise(cx, job, &spec, p, target, objective.as_ref(), seed)?;
            out.push(run);
        }
        Ok(out)
    }

    fn own_input(p: &ActivationMaximisationParams, model: &LoadedModel) -> Option<Vec<f32>> {
        let spec = model.spec.image.as_ref()?;
        match p.start {
            Start::Input => None,
            // The image a zero spectrum makes (the sigmoid of 0), at the model's declared size,
            // which `plan` bounded (MAX_PIXELS).
            Start::Noise => {
                let values = spec.channels.checked_mul(spec.height)?.checked_mul(spec.width)?;
                let input = to_input(spec, &vec![0.5; values]);
                input.as_f32().map(<[f32]>::to_vec)
            }
        }
    }

    fn details_schema() -> Option<NamedSchemas> {
        Some(schemas_of::<ActivationMaximisationDetails>())
    }
}

/// A channel's mean activation as a graph target: weights `1 / positions` on the channel.
struct ChannelObjective {
    layer: String,
    channel: usize,
    /// The seed weights, shaped like one row of the layer (with its batch axis of 1).
    weights: Tensor,
}

impl ChannelObjective {
    /// Reads the layer's shape from one forward pass over the job's input.
    fn find(cx: &mut Cx, job: &ExplainJob, layer: &str, channel: usize) -> Result<Self, RuntimeError> {
        let model = job.model.clone();
        let outputs = cx.forward_with(&model, &[layer.to_string()], &job.input)?;
        let act = outputs
            .get(layer)
            .ok_or_else(|| InputError::BadFeatures(format!("layer `{layer}` gave no activations")))?;
        let mut shape = act.shape.clone();
        if let Some(b) = shape.first_mut() {
            *b = 1;
        }
        let axis = model
            .gradient_report
            .get()
            .and_then(|r| r.cam_layer_channel_axis.get(layer).copied())
            .unwrap_or(1);
        let channels = shape.get(axis).copied().unwrap_or(0);
        let n: usize = shape.iter().product();
        if channel >= channels || n == 0 {
            return Err(InputError::BadFeatures(format!(
                "params.channel {channel} is out of range: layer `{layer}` has {channels} channels"
            ))
            .into());
        }
        // Values past the channel axis, and the positions a channel has.
        let inner: usize = shape.iter().skip(axis + 1).product();
        let positions = n / channels;
        let mut weights = vec![0f32; n];
        for (j, w) in weights.iter_mut().enumerate() {
            if (j / inner) % channels == channel {
                *w = 1.0 / positions as f32;
            }
        }
        Ok(Self {
            layer: layer.to_string(),
            channel,
            weights: Tensor::f32(shape, weights),
        })
    }

    /// The objective of one row of the layer's activations.
    fn score(&self, act: &Tensor) -> f64 {
        let w = self.weights.as_f32().unwrap_or(&[]);
        act.as_f32()
            .unwrap_or(&[])
            .iter()
            .zip(w)
            .map(|(a, w)| *a as f64 * *w as f64)
            .sum()
    }
}

/// Planes of `h x w` pixels inside a one-pixel border (`[k][y + 1][x + 1]`): the image the view
/// reads, whose border holds the 0.5 that lucent's padding puts around it, and the gradient the
/// view's adjoint writes (its border collects what the padding would, and is not read).
#[derive(Debug, Clone, Copy)]
struct Frame {
    h: usize,
    w: usize,
}

impl Frame {
    /// Values in one row of a framed plane.
    fn stride(self) -> usize {
        self.w + 2
    }

    /// Values in one framed plane.
    fn plane_len(self) -> usize {
        (self.h + 2) * self.stride()
    }

    /// Where pixel row `y` starts in a framed plane.
    fn row(self, y: usize) -> usize {
        (y + 1) * self.stride() + 1
    }

    /// `channels` framed planes, every value (the border too) `fill`.
    fn planes(self, channels: usize, fill: f32) -> Vec<f32> {
        vec![fill; channels * self.plane_len()]
    }

    /// The pixels of framed planes without their border, `[k][y][x]`.
    fn unframed(self, framed: &[f32]) -> Vec<f32> {
        let (h, w) = (self.h, self.w);
        let mut out = Vec::with_capacity(framed.len() / self.plane_len() * h * w);
        for plane in framed.chunks_exact(self.plane_len()) {
            for y in 0..h {
                out.extend_from_slice(&plane[self.row(y)..self.row(y) + w]);
            }
        }
        out
    }
}

/// The image's parametrisation: a spectrum per channel (lucent's `fft_image`), its colours
/// decorrelated and squashed by a sigmoid (`to_valid_rgb`), added to a start image's logits.
///
/// The synthesis is numpy's `irfft2(norm="ortho")`: an inverse complex FFT down each frequency
/// column, then a complex-to-real FFT along each row (whose Hermitian extension doubles the
/// columns that stand for a conjugate pair and drops the imaginary parts of the DC and Nyquist
/// columns). Its adjoint runs the same transforms forwards, in the other order. The colour mix
/// is linear as the transform is, so it is done on the spectra, as they are gathered for the
/// transform (and, in the adjoint, as the gradients leave it): no pass of its own over the pixels.
///
/// It owns the buffers both directions work in, so that a step of the optimisation allocates
/// nothing (on a 28 x 28 model a step's Rust work is of the order of its pass).
struct FourierImage {
    channels: usize,
    h: usize,
    w: usize,
    /// Frequency columns, `w / 2 + 1`.
    f: usize,
    /// What the synthesis multiplies each spectrum value by: the scale `1 / max(|freq|, 1 /
    /// max(w, h))` of its (row frequency, column frequency), the ortho norm
    /// `1 / sqrt(h w)` and lucent's division by `magic`.
    gain: Vec<f32>,
    /// What the adjoint multiplies each value by: `gain` and the weight the Hermitian extension
    /// gave its column (2 for a conjugate pair, else 1).
    back_gain: Vec<f32>,
    /// Length-`h` complex FFTs down a frequency column: inverse (synthesis), forward (adjoint).
    cols_inverse: Arc<dyn Fft<f32>>,
    cols_forward: Arc<dyn Fft<f32>>,
    /// Length-`w` real FFTs along a row: complex to real (synthesis), real to complex (adjoint).
    rows_inverse: Arc<dyn ComplexToReal<f32>>,
    rows_forward: Arc<dyn RealToComplex<f32>>,
    /// Model channel `k` as a mix of Fourier channels (the normalised colour matrix, rows in the
    /// model's channel order), `[k][c]`; identity for a grayscale model.
    mix: Vec<f32>,
    /// Logits of the start image (0: mid-grey), `[k][y][x]`.
    offset: Vec<f32>,
    /// One channel's spectrum column by column (`[kx][ky]`, each column's FFT contiguous).
    columns: Vec<Complex<f32>>,
    /// One channel's spectrum row by row (`[ky][kx]`, as the parameters, or `[y][kx]` between
    /// the two FFTs): the colour mix and the row FFTs work here, `columns` holds its transpose.
    mixed: Vec<Complex<f32>>,
    /// One row of pixels.
    line: Vec<f32>,
    /// Scratch the four transforms share, their largest need.
    scratch: Vec<Complex<f32>>,
}

impl FourierImage {
    fn new(spec: &ImageSpec, offset: Option<Vec<f32>>) -> Self {
        let (channels, h, w) = (spec.channels, spec.height, spec.width);
        let f = w / 2 + 1;
        let freq = |k: usize, n: usize| {
            // numpy's fftfreq: 0, 1, ..., then the negative ones.
            let k = k as f64;
            let n_f = n as f64;
            if k < n_f.div_euclid(2.0) + (n % 2) as f64 {
                k / n_f
            } else {
                (k - n_f) / n_f
            }
        };
        let floor = 1.0 / h.max(w) as f64;
        let norm = 1.0 / ((h * w) as f64).sqrt() / MAGIC as f64;
        let (mut gain, mut back_gain) = (Vec::with_capacity(h * f), Vec::with_capacity(h * f));
        for ky in 0..h {
            for kx in 0..f {
                let (fy, fx) = (freq(ky, h), kx as f64 / w as f64);
                let s = 1.0 / (fx * fx + fy * fy).sqrt().max(floor);
                let pair = match kx == 0 || (w % 2 == 0 && kx == w / 2) {
                    true => 1.0,
                    false => 2.0,
                };
                gain.push((s * norm) as f32);
                back_gain.push((s * norm * pair) as f32);
            }
        }
        let mut planner = FftPlanner::<f32>::new();
        let (cols_inverse, cols_forward) = (planner.plan_fft_inverse(h), planner.plan_fft_forward(h));
        let mut real = RealFftPlanner::<f32>::new();
        let (rows_inverse, rows_forward) = (real.plan_fft_inverse(w), real.plan_fft_forward(w));
        let scratch = [
            cols_inverse.get_inplace_scratch_len(),
            cols_forward.get_inplace_scratch_len(),
            rows_inverse.get_scratch_len(),
            rows_forward.get_scratch_len(),
        ]
        .into_iter()
        .max()
        .unwrap_or(0);
        let mix = match (channels, spec.color) {
            (3, order) => {
                let m = COLOR_CORRELATION_SVD_SQRT;
                let max_norm = (0..3)
                    .map(|c| (0..3).map(|r| m[r][c] * m[r][c]).sum::<f32>().sqrt())
                    .fold(0f32, f32::max);
                let mut mix = vec![0f32; 9];
                for k in 0..3 {
                    let rgb = if order == ColorOrder::Bgr { 2 - k } else { k };
                    for c in 0..3 {
                        mix[k * 3 + c] = m[rgb][c] / max_norm;
                    }
                }
                mix
            }
            (n, _) => (0..n * n).map(|i| if i / n == i % n { 1.0 } else { 0.0 }).collect(),
        };
        let values = channels * h * w;
        Self {
            channels,
            h,
            w,
            f,
            gain,
            back_gain,
            cols_inverse,
            cols_forward,
            rows_inverse,
            rows_forward,
            mix,
            offset: offset.unwrap_or_else(|| vec![0.0; values]),
            columns: vec![Complex::default(); h * f],
            mixed: vec![Complex::default(); h * f],
            line: vec![0.0; w],
            scratch: vec![Complex::default(); scratch],
        }
    }

    /// Values of the spectrum (real and imaginary parts).
    fn spectrum_len(&self) -> usize {
        self.channels * self.h * self.f
    }

    /// The planes [`Self::synthesise`] and [`Self::backward`] work on.
    fn frame(&self) -> Frame {
        Frame { h: self.h, w: self.w }
    }

    /// Framed planes for [`Self::synthesise`]: the border 0.5 (what lies outside the image).
    fn framed_image(&self) -> Vec<f32> {
        self.frame().planes(self.channels, 0.5)
    }

    /// The image in [0, 1], `[k][y][x]`, from the spectrum's real and imaginary parts.
    fn image(&mut self, re: &[f32], im: &[f32]) -> Vec<f32> {
        let mut image = self.framed_image();
        self.synthesise(re, im, &mut image);
        self.frame().unframed(&image)
    }

    /// [`Self::image`] into the pixels of framed planes `image` (the border is left as it is).
    fn synthesise(&mut self, re: &[f32], im: &[f32], image: &mut [f32]) {
        let (h, w, f, n) = (self.h, self.w, self.f, self.channels);
        let (hw, hf, frame) = (h * w, h * f, self.frame());
        let Self {
            gain,
            cols_inverse,
            rows_inverse,
            mix,
            offset,
            columns,
            mixed,
            line,
            scratch,
            ..
        } = self;
        for ((plane, mix), offset) in image
            .chunks_exact_mut(frame.plane_len())
            .zip(mix.chunks_exact(n))
            .zip(offset.chunks_exact(hw))
        {
            // This model channel's spectrum: the Fourier channels' mixed, then scaled into columns.
            for (c, (m, (zr, zi))) in mix.iter().zip(re.chunks_exact(hf).zip(im.chunks_exact(hf))).enumerate() {
                let terms = mixed.iter_mut().zip(zr.iter().zip(zi));
                match c {
                    0 => terms.for_each(|(o, (r, i))| *o = Complex::new(m * r, m * i)),
                    _ => terms.for_each(|(o, (r, i))| *o += Complex::new(m * r, m * i)),
                }
            }
            for (v, g) in mixed.iter_mut().zip(gain.iter()) {
                *v *= g;
            }
            // Down the columns, and back to rows (`transpose`'s blocked copies).
            transpose::transpose(mixed, columns, f, h);
            cols_inverse.process_with_scratch(columns, scratch);
            transpose::transpose(columns, mixed, h, f);
            for (y, (offset, row)) in offset.chunks_exact(w).zip(mixed.chunks_exact_mut(f)).enumerate() {
                // What the Hermitian extension leaves real (numpy's irfft drops these too).
                row[0].im = 0.0;
                if w % 2 == 0 {
                    row[f - 1].im = 0.0;
                }
                // Lengths match the plan by construction; the imaginary parts it checks are zero.
                let done = rows_inverse.process_with_scratch(row, line, scratch);
                debug_assert!(done.is_ok(), "{done:?}");
                let start = frame.row(y);
                for ((out, v), b) in plane[start..start + w].iter_mut().zip(line.iter()).zip(offset) {
                    *out = sigmoid(b + v);
                }
            }
        }
    }

    /// The gradient with respect to the spectrum's real and imaginary parts of a function whose
    /// gradient with respect to [`Self::synthesise`]'s output `image` is `grad` (framed planes
    /// both; the borders are not read): the adjoint of each step.
    fn backward(&mut self, image: &[f32], grad: &[f32], d_re: &mut [f32], d_im: &mut [f32]) {
        let (h, w, f, n) = (self.h, self.w, self.f, self.channels);
        let (hf, frame) = (h * f, self.frame());
        let Self {
            back_gain,
            cols_forward,
            rows_forward,
            mix,
            columns,
            mixed,
            line,
            scratch,
            ..
        } = self;
        for (k, ((plane, grad), mix)) in image
            .chunks_exact(frame.plane_len())
            .zip(grad.chunks_exact(frame.plane_len()))
            .zip(mix.chunks_exact(n))
            .enumerate()
        {
            // Through the sigmoid, then the adjoint of the complex-to-real step: a real-to-complex
            // FFT of each row (its column weights are in `back_gain`).
            for (y, row) in mixed.chunks_exact_mut(f).enumerate() {
                let start = frame.row(y);
                for ((l, s), g) in line
                    .iter_mut()
                    .zip(&plane[start..start + w])
                    .zip(&grad[start..start + w])
                {
                    *l = g * s * (1.0 - s);
                }
                // The transform uses its input as scratch.
                let done = rows_forward.process_with_scratch(line, row, scratch);
                debug_assert!(done.is_ok(), "{done:?}");
            }
            // The adjoint of the inverse FFT down each column is the forward one.
            transpose::transpose(mixed, columns, f, h);
            cols_forward.process_with_scratch(columns, scratch);
            transpose::transpose(columns, mixed, h, f);
            // Then of the scaling and of the colour mix (transposed): into every Fourier channel
            // (the first model channel sets the gradient, the others add).
            for (v, g) in mixed.iter_mut().zip(back_gain.iter()) {
                *v *= g;
            }
            for (m, (zr, zi)) in mix.iter().zip(d_re.chunks_exact_mut(hf).zip(d_im.chunks_exact_mut(hf))) {
                let terms = zr.iter_mut().zip(zi.iter_mut()).zip(mixed.iter());
                match k {
                    0 => terms.for_each(|((r, i), v)| (*r, *i) = (m * v.re, m * v.im)),
                    _ => terms.for_each(|((r, i), v)| (*r, *i) = (*r + m * v.re, *i + m * v.im)),
                }
            }
        }
    }
}

fn sigmoid(v: f32) -> f32 {
    1.0 / (1.0 + (-v).exp())
}

/// One step's random view of the image: a translation, a scale and a rotation about the centre,
/// as one inverse affine map from output pixels to image pixels (bilinear, 0.5 outside).
#[derive(Debug, Clone, Copy)]
struct View {
    /// Output offset from the centre to image offset: `[[a, b], [c, d]]`.
    m: [f32; 4],
    /// Translation, output pixels.
    t: [f32; 2],
}

impl View {
    const IDENTITY: View = View {
        m: [1.0, 0.0, 0.0, 1.0],
        t: [0.0, 0.0],
    };

    /// lucent's `standard_transforms` drawn once, distances scaled from a 224-pixel image to `side`.
    fn draw(rng: &mut ChaCha8Rng, side: usize) -> Self {
        // lucent's jitter needs d > 1 (a shift of 0 or 1 pixel).
        let px = |d: f32| ((d * side as f32 / 224.0).round() as usize).max(2);
        let (j1, j2) = (px(8.0), px(4.0));
        // Each jitter shifts by 0..d-1 pixels; centred here so that the view stays on the image.
        let shift = |rng: &mut ChaCha8Rng| {
            (rng.random_range(0..j1) + rng.random_range(0..j2)) as f32 - ((j1 - 1) + (j2 - 1)) as f32 / 2.0
        };
        let (dx, dy) = (shift(rng), shift(rng));
        let scale = 1.0 + (rng.random_range(0..11usize) as f32 - 5.0) / 50.0;
        // -10..=10 degrees, and 0 five more times.
        let k = rng.random_range(0..26usize);
        let degrees = if k < 21 { k as f32 - 10.0 } else { 0.0 };
        let (sin, cos) = degrees.to_radians().sin_cos();
        // Output = R S (image - centre) + centre + t; inverse: image = (R S)^-1 (output - centre - t) + centre.
        View {
            m: [cos / scale, sin / scale, -sin / scale, cos / scale],
            t: [dx, dy],
        }
    }
}

/// A view's bilinear taps over a framed `h x w` image ([`Frame`]), computed once per view and read
/// by both the view and its adjoint: for each output pixel, the framed index of the top-left of
/// the four pixels it reads and its fractions right and down. A tap past the image reads the
/// frame's border (0.5); coordinates past the border are clamped to it, where every tap reads
/// 0.5 (or has weight 0), so that neither direction branches or checks more than its slice.
struct Sampling {
    frame: Frame,
    corner: Vec<u32>,
    fx: Vec<f32>,
    fy: Vec<f32>,
}

impl Sampling {
    /// Room for the taps of an `h x w` image (at most [`MAX_PIXELS`], so framed indices fit in `u32`).
    fn new(h: usize, w: usize) -> Self {
        let hw = h * w;
        Self {
            frame: Frame { h, w },
            corner: vec![0; hw],
            fx: vec![0.0; hw],
            fy: vec![0.0; hw],
        }
    }

    /// The taps of `view`.
    fn set(&mut self, view: &View) {
        let Frame { h, w } = self.frame;
        let stride = self.frame.stride();
        // Framed coordinates: the image's pixel x is column x + 1; columns 0 and w + 1 are border.
        let (cx, cy) = ((w as f32 - 1.0) / 2.0 + 1.0, (h as f32 - 1.0) / 2.0 + 1.0);
        let (umax, vmax) = ((w + 1) as f32, (h + 1) as f32);
        let rows = self
            .corner
            .chunks_exact_mut(w)
            .zip(self.fx.chunks_exact_mut(w).zip(self.fy.chunks_exact_mut(w)));
        for (y, (corners, (fxs, fys))) in rows.enumerate() {
            let oy = y as f32 - (h as f32 - 1.0) / 2.0 - view.t[1];
            for (x, (corner, (fx, fy))) in corners.iter_mut().zip(fxs.iter_mut().zip(fys.iter_mut())).enumerate() {
                let ox = x as f32 - (w as f32 - 1.0) / 2.0 - view.t[0];
                let u = (view.m[0] * ox + view.m[1] * oy + cx).clamp(0.0, umax);
                let v = (view.m[2] * ox + view.m[3] * oy + cy).clamp(0.0, vmax);
                // Both are at least 0, so the casts floor; at the far border the corner stays one
                // short of it with fraction 1 (its right or lower taps read the border).
                let (x0, y0) = ((u as usize).min(w), (v as usize).min(h));
                *corner = (y0 * stride + x0) as u32;
                *fx = u - x0 as f32;
                *fy = v - y0 as f32;
            }
        }
    }

    /// The view of `image` (framed planes) as the model's input, into `input` (the model's layout).
    fn apply(&self, spec: &ImageSpec, image: &[f32], input: &mut [f32]) {
        let s = self.frame.stride();
        let hw = self.corner.len();
        let taps = || self.corner.iter().zip(self.fx.iter().zip(&self.fy));
        for (k, plane) in image.chunks_exact(self.frame.plane_len()).enumerate() {
            let (factor, shift) = input_affine(spec, k);
            match spec.layout {
                Layout::NCHW => {
                    for (d, tap) in input[k * hw..(k + 1) * hw].iter_mut().zip(taps()) {
                        *d = bilinear(plane, s, tap) * factor - shift;
                    }
                }
                Layout::NHWC => {
                    for (d, tap) in input.iter_mut().skip(k).step_by(spec.channels).zip(taps()) {
                        *d = bilinear(plane, s, tap) * factor - shift;
                    }
                }
            }
        }
    }

    /// The adjoint of [`Self::apply`]: the gradient on the image (framed planes, into `out`) of
    /// `grad` on the model's input.
    fn adjoint(&self, spec: &ImageSpec, grad: &[f32], out: &mut [f32]) {
        let s = self.frame.stride();
        let hw = self.corner.len();
        let taps = || self.corner.iter().zip(self.fx.iter().zip(&self.fy));
        for (k, plane) in out.chunks_exact_mut(self.frame.plane_len()).enumerate() {
            plane.fill(0.0);
            let (factor, _) = input_affine(spec, k);
            match spec.layout {
                Layout::NCHW => {
                    for (g, tap) in grad.get(k * hw..(k + 1) * hw).unwrap_or(&[]).iter().zip(taps()) {
                        spread(plane, s, g * factor, tap);
                    }
                }
                Layout::NHWC => {
                    for (g, tap) in grad.iter().skip(k).step_by(spec.channels).zip(taps()) {
                        spread(plane, s, g * factor, tap);
                    }
                }
            }
        }
    }
}

/// One output pixel of a view: the bilinear mix of the four framed pixels at `corner` (framed
/// planes of row length `s`), in range by construction ([`Sampling::set`]; out of range reads 0.5).
#[inline(always)]
fn bilinear(plane: &[f32], s: usize, (corner, (fx, fy)): (&u32, (&f32, &f32))) -> f32 {
    let i = *corner as usize;
    let Some(q) = plane.get(i..i + s + 2) else { return 0.5 };
    let top = q[0] + fx * (q[1] - q[0]);
    let bottom = q[s] + fx * (q[s + 1] - q[s]);
    top + fy * (bottom - top)
}

/// The adjoint of [`bilinear`]: `g` on its output spread over its four framed pixels.
#[inline(always)]
fn spread(plane: &mut [f32], s: usize, g: f32, (corner, (fx, fy)): (&u32, (&f32, &f32))) {
    let i = *corner as usize;
    if let Some(q) = plane.get_mut(i..i + s + 2) {
        let (top, bottom) = (g * (1.0 - fy), g * fy);
        q[0] += top * (1.0 - fx);
        q[1] += top * fx;
        q[s] += bottom * (1.0 - fx);
        q[s + 1] += bottom * fx;
    }
}

/// The model's input for an image in [0, 1] (`[k][y][x]`).
fn to_input(spec: &ImageSpec, image: &[f32]) -> Tensor {
    let (c, h, w) = (spec.channels, spec.height, spec.width);
    let mut data = vec![0f32; c * h * w];
    let hw = h * w;
    for (k, plane) in image.chunks_exact(hw).enumerate() {
        let (factor, shift) = input_affine(spec, k);
        let values = plane.iter().map(|v| v * factor - shift);
        match spec.layout {
            Layout::NCHW => data[k * hw..(k + 1) * hw]
                .iter_mut()
                .zip(values)
                .for_each(|(d, v)| *d = v),
            Layout::NHWC => data.iter_mut().skip(k).step_by(c).zip(values).for_each(|(d, v)| *d = v),
        }
    }
    let shape = match spec.layout {
        Layout::NCHW => vec![1, c, h, w],
        Layout::NHWC => vec![1, h, w, c],
    };
    Tensor::f32(shape, data)
}

/// Channel `k` of the model's input as `image * factor - shift` of the image's value in [0, 1]
/// (`factor` is its derivative).
fn input_affine(spec: &ImageSpec, k: usize) -> (f32, f32) {
    let std = spec.std.get(k).copied().unwrap_or(1.0);
    (255.0 * spec.scale / std, spec.mean.get(k).copied().unwrap_or(0.0) / std)
}

/// The job's input as an image in [0, 1], `[k][y][x]` (the inverse of [`to_input`]).
fn from_input(spec: &ImageSpec, input: &[f32]) -> Vec<f32> {
    let (c, hw) = (spec.channels, spec.height * spec.width);
    let mut image = vec![0f32; c * hw];
    for k in 0..c {
        let (mean, std) = (
            spec.mean.get(k).copied().unwrap_or(0.0),
            spec.std.get(k).copied().unwrap_or(1.0),
        );
        for j in 0..hw {
            let v = match spec.layout {
                Layout::NCHW => input.get(k * hw + j),
                Layout::NHWC => input.get(j * c + k),
            };
            image[k * hw + j] = (v.copied().unwrap_or(0.0) * std + mean) / (255.0 * spec.scale);
        }
    }
    image
}

/// The total-variation and L2 penalties of an image in [0, 1] (framed planes), weighted, with
/// their gradient added to `grad` (framed as well; negated: the objective is maximised).
fn penalties(p: &ActivationMaximisationParams, image: &[f32], frame: Frame, grad: &mut [f32]) -> f64 {
    let (h, w, s) = (frame.h, frame.w, frame.stride());
    let channels = image.len() / frame.plane_len();
    let mut total = 0f64;
    if p.total_variation > 0.0 {
        let weight = p.total_variation;
        let mut tv = 0f64;
        for c in 0..channels {
            let base = c * frame.plane_len();
            for y in 0..h {
                for x in 0..w {
                    let i = base + frame.row(y) + x;
                    for j in [(x + 1 < w).then_some(i + 1), (y + 1 < h).then_some(i + s)]
                        .into_iter()
                        .flatten()
                    {
                        let d = image[i] - image[j];
                        tv += d.abs() as f64;
                        let s = weight * d.signum();
                        grad[i] -= s;
                        grad[j] += s;
                    }
                }
            }
        }
        total += weight as f64 * tv;
    }
    if p.l2 > 0.0 {
        // The image's pixels, without the border.
        let pixels = || {
            (0..channels).flat_map(move |c| {
                (0..h).flat_map(move |y| {
                    let start = c * frame.plane_len() + frame.row(y);
                    start..start + w
                })
            })
        };
        let norm = (1e-6 + pixels().map(|i| (image[i] as f64).powi(2)).sum::<f64>()).sqrt();
        for i in pixels() {
            grad[i] -= p.l2 * (image[i] as f64 / norm) as f32;
        }
        total += p.l2 as f64 * norm;
    }
    total
}

/// Adam (Kingma and Ba 2015) with PyTorch's defaults, ascending.
struct Adam {
    lr: f32,
    m: Vec<f32>,
    v: Vec<f32>,
    t: i32,
}

impl Adam {
    const BETA1: f32 = 0.9;
    const BETA2: f32 = 0.999;
    const EPS: f32 = 1e-8;

    fn new(lr: f32, n: usize) -> Self {
        Self {
            lr,
            m: vec![0.0; n],
            v: vec![0.0; n],
            t: 0,
        }
    }

    /// One step up the gradient `g` of the values `x`.
    fn step(&mut self, x: &mut [f32], g: &[f32]) {
        self.t += 1;
        let (c1, c2) = (1.0 - Self::BETA1.powi(self.t), 1.0 - Self::BETA2.powi(self.t));
        // PyTorch's form: lr / c1 * m / (sqrt(v) / sqrt(c2) + eps), constants hoisted.
        let (step, root) = (self.lr / c1, 1.0 / c2.sqrt());
        // One length for the four slices, so that the loop runs without bounds checks (in
        // vector registers).
        let n = x.len().min(g.len()).min(self.m.len()).min(self.v.len());
        let (x, g, m, v) = (&mut x[..n], &g[..n], &mut self.m[..n], &mut self.v[..n]);
        for i in 0..n {
            m[i] = Self::BETA1 * m[i] + (1.0 - Self::BETA1) * g[i];
            v[i] = Self::BETA2 * v[i] + (1.0 - Self::BETA2) * g[i] * g[i];
            x[i] += step * m[i] / (v[i].sqrt() * root + Self::EPS);
        }
    }
}

/// The objective and the gradient of the model input for one image (a backward row); `weights`
/// are the target's one-hot row (a channel's objective has its own).
fn objective(
    cx: &mut Cx,
    input: &Tensor,
    target: &Prediction,
    weights: &Tensor,
    channel: Option<&ChannelObjective>,
) -> Result<(f64, Tensor), RuntimeError> {
    match channel {
        Some(o) => {
            let pass = cx.seeded_gradients(&o.layer, input, &o.weights)?;
            let score = pass.layers.first().map_or(f64::NAN, |(act, _)| o.score(act));
            Ok((score, pass.input_grad))
        }
        None => {
            let pass = cx.gradients(&[], RuleSet::Exact, input, weights, 1)?;
            let score = pass
                .scores
                .as_f32()
                .and_then(|s| s.get(target.index))
                .map_or(f64::NAN, |v| *v as f64);
            Ok((score, pass.input_grad))
        }
    }
}

/// The objective of an image without a gradient: one forward row.
fn score_of(
    cx: &mut Cx,
    job: &ExplainJob,
    input: &Tensor,
    target: &Prediction,
    channel: Option<&ChannelObjective>,
) -> Result<f64, RuntimeError> {
    match channel {
        Some(o) => {
            let model = job.model.clone();
            let outputs = cx.forward_with(&model, std::slice::from_ref(&o.layer), input)?;
            Ok(outputs.get(&o.layer).map_or(f64::NAN, |a| o.score(a)))
        }
        None => Ok(cx
            .forward(input)?
            .as_f32()
            .and_then(|s| s.get(target.index))
            .map_or(f64::NAN, |v| *v as f64)),
    }
}

#[allow(clippy::too_many_arguments)] // the job, its image's spec, the parameters, what to maximise, the seed
fn optimise(
    cx: &mut Cx,
    job: &ExplainJob,
    spec: &ImageSpec,
    p: &ActivationMaximisationParams,
    target: &Prediction,
    channel: Option<&ChannelObjective>,
    seed: u64,
) -> Result<TargetAttribution, RuntimeError> {
    let (h, w) = (spec.height, spec.width);
    let offset = match p.start {
        Start::Noise => None,
        Start::Input => Some(
            from_input(spec, job.input.as_f32().unwrap_or(&[]))
                .into_iter()
                .map(|v| {
                    let v = v.clamp(0.01, 0.99);
                    (v / (1.0 - v)).ln()
                })
                .collect(),
        ),
    };
    let mut param = FourierImage::new(spec, offset);
    let n = param.spectrum_len();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    // lucent's `sd = 0.01`.
    let normal = Normal::new(0.0f32, 0.01).map_err(|e| InputError::BadFeatures(e.to_string()))?;
    let mut re: Vec<f32> = (0..n).map(|_| normal.sample(&mut rng)).collect();
    let mut im: Vec<f32> = (0..n).map(|_| normal.sample(&mut rng)).collect();
    let (mut adam_re, mut adam_im) = (Adam::new(p.learning_rate, n), Adam::new(p.learning_rate, n));
    let (mut d_re, mut d_im) = (vec![0f32; n], vec![0f32; n]);
    let mut input = to_input(spec, &param.image(&re, &im));
    let initial_score = score_of(cx, job, &input, target, channel)?;
    let weights = one_hot(&[target.index], crate::common::detection_targets::width(&job.model));
    // Every step works in these buffers (and the parametrisation's own): it allocates nothing
    // but what the pass answers. The image and its gradient are framed planes (see `Frame`).
    let frame = param.frame();
    let (mut image, mut d_image) = (param.framed_image(), param.framed_image());
    let mut sampling = Sampling::new(h, w);
    sampling.set(&View::IDENTITY);
    let mut curve = Vec::with_capacity(p.iterations);
    for _ in 0..p.iterations {
        cx.checkpoint()?;
        param.synthesise(&re, &im, &mut image);
        if p.transforms {
            sampling.set(&View::draw(&mut rng, h.max(w)));
        }
        if let TensorData::F32(values) = &mut input.data {
            sampling.apply(spec, &image, values);
        }
        let (score, grad) = objective(cx, &input, target, &weights, channel)?;
        // The input gradient back through the view to the image's pixels.
        sampling.adjoint(spec, grad.as_f32().unwrap_or(&[]), &mut d_image);
        let penalty = penalties(p, &image, frame, &mut d_image);
        curve.push(score - penalty);
        param.backward(&image, &d_image, &mut d_re, &mut d_im);
        adam_re.step(&mut re, &d_re);
        adam_im.step(&mut im, &d_im);
    }
    let image = param.image(&re, &im);
    let input = to_input(spec, &image);
    let final_score = score_of(cx, job, &input, target, channel)?;
    let details = ActivationMaximisationDetails {
        objective: if channel.is_some() { "channel" } else { "class" }.into(),
        layer: channel.map(|o| o.layer.clone()),
        channel: channel.map(|o| o.channel),
        initial_score,
        final_score,
        curve,
        image_png: base64::engine::general_purpose::STANDARD.encode(png(spec, &image)),
        image_shape: vec![h, w],
    };
    let mut row_shape = input.shape.clone();
    row_shape.remove(0);
    let tensor = Tensor::f32(row_shape, input.as_f32().unwrap_or(&[]).to_vec());
    Ok(TargetAttribution {
        target: target.clone(),
        tensor,
        map: None,
        convergence_delta: None,
        layer: channel.map(|o| o.layer.clone()),
        details: serde_json::to_value(details).ok(),
    })
}

/// The image as PNG (RGB in RGB order whatever the model's, or grayscale).
fn png(spec: &ImageSpec, image: &[f32]) -> Vec<u8> {
    let (h, w) = (spec.height, spec.width);
    let hw = h * w;
    let byte = |v: f32| (v.clamp(0.0, 1.0) * 255.0).round() as u8;
    let rgb = image::RgbImage::from_fn(w as u32, h as u32, |x, y| {
        let j = y as usize * w + x as usize;
        let plane = |k: usize| byte(image.get(k * hw + j).copied().unwrap_or(0.0));
        match (spec.channels, spec.color) {
            (3, ColorOrder::Bgr) => image::Rgb([plane(2), plane(1), plane(0)]),
            (3, _) => image::Rgb([plane(0), plane(1), plane(2)]),
            _ => image::Rgb([plane(0); 3]),
        }
    });
    let mut out = Vec::new();
    let result = match spec.channels {
        3 => rgb.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png),
        _ => image::DynamicImage::ImageRgb8(rgb)
            .to_luma8()
            .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png),
    };
    // Encoding an in-memory buffer to PNG does not fail.
    let _ = result;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(channels: usize, side: usize) -> ImageSpec {
        use crate::runtime::manifest::{Fit, ResizeFilter};
        ImageSpec {
            layout: Layout::NCHW,
            width: side,
            height: side,
            channels,
            color: if channels == 3 {
                ColorOrder::Rgb
            } else {
                ColorOrder::Grayscale
            },
            resize: ResizeFilter::Nearest,
            fit: Fit::Stretch,
            pad: 0,
            scale: 1.0 / 255.0,
            mean: vec![0.0; channels],
            std: vec![1.0; channels],
        }
    }

    /// The hand-written backward pass of the parametrisation and of a view agree with finite
    /// differences (seed printed on failure), in both layouts, through the model input's scaling.
    #[test]
    fn the_parametrisation_s_gradient_matches_finite_differences() {
        for (channels, side, layout) in [(1, 6, Layout::NCHW), (3, 5, Layout::NCHW), (3, 5, Layout::NHWC)] {
            let mut spec = spec(channels, side);
            spec.layout = layout;
            if channels == 3 {
                (spec.mean, spec.std) = (vec![100.0, 120.0, 90.0], vec![50.0, 60.0, 70.0]);
            }
            let mut param = FourierImage::new(&spec, None);
            let n = param.spectrum_len();
            let seed = 7 + channels as u64;
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let normal = Normal::new(0.0f32, 0.3).unwrap();
            let re: Vec<f32> = (0..n).map(|_| normal.sample(&mut rng)).collect();
            let im: Vec<f32> = (0..n).map(|_| normal.sample(&mut rng)).collect();
            let mut sampling = Sampling::new(side, side);
            sampling.set(&View::draw(&mut rng, 224));
            let len = channels * side * side;
            let weights: Vec<f32> = (0..len).map(|_| normal.sample(&mut rng)).collect();
            // f = sum(weights * input(view(image))).
            let f = |param: &mut FourierImage, re: &[f32], im: &[f32]| -> f64 {
                let mut image = param.framed_image();
                param.synthesise(re, im, &mut image);
                let mut input = vec![0f32; len];
                sampling.apply(&spec, &image, &mut input);
                input.iter().zip(&weights).map(|(a, b)| (*a as f64) * (*b as f64)).sum()
            };
            let mut image = param.framed_image();
            param.synthesise(&re, &im, &mut image);
            // Whatever the gradient's planes held before, the adjoint overwrites them.
            let mut d_image = vec![f32::NAN; image.len()];
            sampling.adjoint(&spec, &weights, &mut d_image);
            let (mut d_re, mut d_im) = (vec![0f32; n], vec![0f32; n]);
            param.backward(&image, &d_image, &mut d_re, &mut d_im);
            let eps = 1e-2f32;
            for i in (0..n).step_by(3) {
                for (which, analytic) in [(0, d_re[i]), (1, d_im[i])] {
                    let (mut a, mut b) = (re.clone(), im.clone());
                    let (mut c, mut d) = (re.clone(), im.clone());
                    if which == 0 {
                        a[i] += eps;
                        c[i] -= eps;
                    } else {
                        b[i] += eps;
                        d[i] -= eps;
                    }
                    let numeric = (f(&mut param, &a, &b) - f(&mut param, &c, &d)) / (2.0 * eps as f64);
                    assert!(
                        (numeric - analytic as f64).abs() <= 2e-3 + 1e-2 * numeric.abs(),
                        "seed {seed}, channels {channels}, {layout:?}, value {i}.{which}: numeric {numeric}, analytic {analytic}"
                    );
                }
            }
        }
    }

    /// A view is bilinear resampling with 0.5 outside the image, from its definition: the framed
    /// taps (the border, the clamping past it) give the same values, for views that reach far
    /// past every side as for lucent's small ones.
    #[test]
    fn a_view_is_bilinear_with_grey_outside() {
        let (h, w) = (7, 10);
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let image: Vec<f32> = (0..h * w).map(|_| rng.random_range(0.0..1.0)).collect();
        let mut framed = Frame { h, w }.planes(1, 0.5);
        for y in 0..h {
            let start = Frame { h, w }.row(y);
            framed[start..start + w].copy_from_slice(&image[y * w..(y + 1) * w]);
        }
        let (sin, cos) = 0.4f32.sin_cos();
        let mut views = vec![
            View::IDENTITY,
            View {
                m: [0.4, 0.0, 0.0, 0.4],
                t: [0.3, -0.6],
            },
            View {
                m: [cos * 2.5, sin * 2.5, -sin * 2.5, cos * 2.5],
                t: [1.5, 2.25],
            },
            View {
                m: [1.0, 0.0, 0.0, 1.0],
                t: [-9.5, 6.5],
            },
        ];
        views.extend((0..8).map(|_| View::draw(&mut rng, 224)));
        let mut sampling = Sampling::new(h, w);
        for view in views {
            sampling.set(&view);
            let mut got = vec![0f32; h * w];
            let mut spec = spec(1, h);
            spec.width = w;
            sampling.apply(&spec, &framed, &mut got);
            let (cx, cy) = ((w as f64 - 1.0) / 2.0, (h as f64 - 1.0) / 2.0);
            let m = view.m.map(f64::from);
            for y in 0..h {
                for x in 0..w {
                    let (ox, oy) = (x as f64 - cx - view.t[0] as f64, y as f64 - cy - view.t[1] as f64);
                    let (sx, sy) = (m[0] * ox + m[1] * oy + cx, m[2] * ox + m[3] * oy + cy);
                    let (x0, y0) = (sx.floor(), sy.floor());
                    let (fx, fy) = (sx - x0, sy - y0);
                    let pixel = |xi: f64, yi: f64| match xi >= 0.0 && yi >= 0.0 && xi < w as f64 && yi < h as f64 {
                        true => image[yi as usize * w + xi as usize] as f64,
                        false => 0.5,
                    };
                    let want = pixel(x0, y0) * (1.0 - fx) * (1.0 - fy)
                        + pixel(x0 + 1.0, y0) * fx * (1.0 - fy)
                        + pixel(x0, y0 + 1.0) * (1.0 - fx) * fy
                        + pixel(x0 + 1.0, y0 + 1.0) * fx * fy;
                    let got = got[y * w + x] as f64;
                    assert!((got - want).abs() < 1e-5, "{view:?} at ({x}, {y}): {got} vs {want}");
                }
            }
        }
    }

    /// The scale `1 / max(|freq|, 1 / max(w, h))` of spectrum value `j` (its gain over the norms).
    fn scale_of(param: &FourierImage, j: usize) -> f64 {
        param.gain[j] as f64 * ((param.h * param.w) as f64).sqrt() * MAGIC as f64
    }

    /// numpy's `irfft2(norm="ortho")` of the scaled spectrum over `MAGIC`, from its definition in
    /// f64: each column `kx` weighted 2 when it stands for a conjugate pair, only the real part kept.
    fn irfft2_reference(param: &FourierImage, re: &[f32], im: &[f32]) -> Vec<f64> {
        let (h, w, f) = (param.h, param.w, param.f);
        let tau = std::f64::consts::TAU;
        let norm = 1.0 / ((h * w) as f64).sqrt() / MAGIC as f64;
        let mut out = vec![0f64; h * w];
        for y in 0..h {
            for x in 0..w {
                let mut sum = 0f64;
                for ky in 0..h {
                    for kx in 0..f {
                        let j = ky * f + kx;
                        let pair = if kx == 0 || (w % 2 == 0 && kx == w / 2) {
                            1.0
                        } else {
                            2.0
                        };
                        let phi = tau * (((ky * y) % h) as f64 / h as f64 + ((kx * x) % w) as f64 / w as f64);
                        let s = scale_of(param, j);
                        sum += pair * s * (re[j] as f64 * phi.cos() - im[j] as f64 * phi.sin());
                    }
                }
                out[y * w + x] = sum * norm;
            }
        }
        out
    }

    /// The FFT synthesis and its adjoint equal the transform's definition (f64) within 1e-5, on
    /// even, odd and non-square sizes: the image, and the gradient of `sum(g * image)`.
    #[test]
    fn the_fft_synthesis_and_its_adjoint_equal_the_dft() {
        for (h, w) in [(4, 4), (5, 7), (6, 9), (28, 28), (17, 32), (64, 48)] {
            let mut spec = spec(1, h);
            spec.width = w;
            let mut param = FourierImage::new(&spec, None);
            let n = param.spectrum_len();
            let mut rng = ChaCha8Rng::seed_from_u64((h * 100 + w) as u64);
            let normal = Normal::new(0.0f32, 0.05).unwrap();
            let re: Vec<f32> = (0..n).map(|_| normal.sample(&mut rng)).collect();
            let im: Vec<f32> = (0..n).map(|_| normal.sample(&mut rng)).collect();
            let linear = irfft2_reference(&param, &re, &im);
            let image = param.image(&re, &im);
            for (i, (a, b)) in image.iter().zip(&linear).enumerate() {
                let expected = 1.0 / (1.0 + (-b).exp());
                assert!(
                    (*a as f64 - expected).abs() < 1e-5,
                    "{h}x{w} pixel {i}: {a} vs {expected}"
                );
            }
            // The gradient of sum(g * image) on the spectrum, by the reference: each value's
            // coefficient in the synthesis, times g s (1 - s).
            let g: Vec<f32> = (0..h * w).map(|_| normal.sample(&mut rng) * 20.0).collect();
            let (mut d_re, mut d_im) = (vec![0f32; n], vec![0f32; n]);
            let (mut framed, mut framed_g) = (param.framed_image(), param.framed_image());
            param.synthesise(&re, &im, &mut framed);
            for y in 0..h {
                let start = param.frame().row(y);
                framed_g[start..start + w].copy_from_slice(&g[y * w..(y + 1) * w]);
            }
            param.backward(&framed, &framed_g, &mut d_re, &mut d_im);
            let pre: Vec<f64> = g.iter().zip(&image).map(|(g, s)| (g * s * (1.0 - s)) as f64).collect();
            let tau = std::f64::consts::TAU;
            let norm = 1.0 / ((h * w) as f64).sqrt() / MAGIC as f64;
            let f = param.f;
            for j in 0..n {
                let (ky, kx) = (j / f, j % f);
                let pair = if kx == 0 || (w % 2 == 0 && kx == w / 2) {
                    1.0
                } else {
                    2.0
                };
                let c = pair * norm * scale_of(&param, j);
                let (mut er, mut ei) = (0f64, 0f64);
                for y in 0..h {
                    for x in 0..w {
                        let phi = tau * (((ky * y) % h) as f64 / h as f64 + ((kx * x) % w) as f64 / w as f64);
                        er += pre[y * w + x] * c * phi.cos();
                        ei -= pre[y * w + x] * c * phi.sin();
                    }
                }
                for (got, want, part) in [(d_re[j], er, "re"), (d_im[j], ei, "im")] {
                    assert!(
                        (got as f64 - want).abs() < 1e-5 * want.abs().max(1.0),
                        "{h}x{w} value {j}.{part}: {got} vs {want}"
                    );
                }
            }
        }
    }

    /// The colour mix, done on the spectra, is the mix of the Fourier channels' pixels (lucent's
    /// `to_valid_rgb` after `fft_image`), in RGB and BGR order, on a non-square image.
    #[test]
    fn the_colour_mix_on_the_spectra_is_the_mix_of_the_pixels() {
        let (h, w) = (6, 9);
        for color in [ColorOrder::Rgb, ColorOrder::Bgr] {
            let mut spec = spec(3, h);
            (spec.width, spec.color) = (w, color);
            let mut param = FourierImage::new(&spec, None);
            let mut gray = spec.clone();
            (gray.channels, gray.color) = (1, ColorOrder::Grayscale);
            let one = FourierImage::new(&gray, None);
            let n = param.spectrum_len();
            let mut rng = ChaCha8Rng::seed_from_u64(11);
            let normal = Normal::new(0.0f32, 0.3).unwrap();
            let re: Vec<f32> = (0..n).map(|_| normal.sample(&mut rng)).collect();
            let im: Vec<f32> = (0..n).map(|_| normal.sample(&mut rng)).collect();
            let hf = n / 3;
            let planes: Vec<Vec<f64>> = (0..3)
                .map(|c| irfft2_reference(&one, &re[c * hf..(c + 1) * hf], &im[c * hf..(c + 1) * hf]))
                .collect();
            let m = COLOR_CORRELATION_SVD_SQRT.map(|row| row.map(f64::from));
            let max_norm = (0..3)
                .map(|c| (0..3).map(|r| m[r][c] * m[r][c]).sum::<f64>().sqrt())
                .fold(0f64, f64::max);
            let image = param.image(&re, &im);
            for k in 0..3 {
                // Model channel k is colour `rgb` of lucent's matrix.
                let rgb = if color == ColorOrder::Bgr { 2 - k } else { k };
                for j in 0..h * w {
                    let mixed: f64 = (0..3).map(|c| m[rgb][c] / max_norm * planes[c][j]).sum();
                    let expected = 1.0 / (1.0 + (-mixed).exp());
                    let got = image[k * h * w + j] as f64;
                    assert!(
                        (got - expected).abs() < 1e-5,
                        "{color:?} channel {k} pixel {j}: {got} vs {expected}"
                    );
                }
            }
        }
    }

    /// The synthesis is torch.fft.irfftn(norm="ortho") of the scaled spectrum over 4: a lone
    /// DC coefficient gives a flat image of `scale * value / sqrt(h w) / 4` before the sigmoid.
    #[test]
    fn a_lone_dc_coefficient_is_a_flat_image() {
        let spec = spec(1, 4);
        let mut param = FourierImage::new(&spec, None);
        let n = param.spectrum_len();
        let (mut re, im) = (vec![0f32; n], vec![0f32; n]);
        re[0] = 1.0;
        let image = param.image(&re, &im);
        // scale at DC is 1 / (1 / max(w, h)) = 4; ortho norm 1/4; magic 4.
        let expected = sigmoid(4.0 * 1.0 / 4.0 / 4.0);
        assert!(image.iter().all(|v| (v - expected).abs() < 1e-6), "{image:?}");
    }
}
