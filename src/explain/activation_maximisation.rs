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
        // Per image: the spectrum and Adam's two moments (f32, real and imaginary), the images
        // on the way (a handful of copies), the view's taps (four indices and weights and a
        // constant per pixel), the FFTs' column buffer and scratch, and the curve.
        let channels = cx.model.spec.image.as_ref().map_or(1, |i| i.channels);
        let (h, w) = cx.model.spec.image.as_ref().map_or((1, 1), |i| (i.height, i.width));
        let spectrum = channels.saturating_mul(h).saturating_mul(w / 2 + 1).saturating_mul(2);
        let working = bytes(spectrum, 4 * 4)
            .saturating_add(bytes(channels.saturating_mul(pixels), 4 * 8))
            .saturating_add(bytes(pixels, 4 * 9))
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
                let (input, _) = to_input(spec, &vec![0.5; values]);
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

/// The image's parametrisation: a spectrum per channel (lucent's `fft_image`), its colours
/// decorrelated and squashed by a sigmoid (`to_valid_rgb`), added to a start image's logits.
///
/// The synthesis is numpy's `irfft2(norm="ortho")`: an inverse complex FFT down each frequency
/// column, then a complex-to-real FFT along each row (whose Hermitian extension doubles the
/// columns that stand for a conjugate pair and drops the imaginary parts of the DC and Nyquist
/// columns). Its adjoint runs the same transforms forwards, in the other order.
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
    /// One row's spectrum, and one row of pixels.
    row: Vec<Complex<f32>>,
    line: Vec<f32>,
    /// Scratch the four transforms share, their largest need.
    scratch: Vec<Complex<f32>>,
    /// The Fourier channels' pixels (synthesis), or their gradient (adjoint), `[c][y][x]`.
    planes: Vec<f32>,
    /// The gradient before the sigmoid (adjoint), `[k][y][x]`.
    pre: Vec<f32>,
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
            row: vec![Complex::default(); f],
            line: vec![0.0; w],
            scratch: vec![Complex::default(); scratch],
            planes: vec![0.0; values],
            pre: vec![0.0; values],
        }
    }

    /// Values of the spectrum (real and imaginary parts).
    fn spectrum_len(&self) -> usize {
        self.channels * self.h * self.f
    }

    /// Values of the image.
    fn image_len(&self) -> usize {
        self.channels * self.h * self.w
    }

    /// The image in [0, 1], `[k][y][x]`, from the spectrum's real and imaginary parts.
    fn image(&mut self, re: &[f32], im: &[f32]) -> Vec<f32> {
        let mut image = vec![0f32; self.image_len()];
        self.synthesise(re, im, &mut image);
        image
    }

    /// [`Self::image`] into `image` (`image_len` values).
    fn synthesise(&mut self, re: &[f32], im: &[f32], image: &mut [f32]) {
        let (h, w, f) = (self.h, self.w, self.f);
        let (hw, hf) = (h * w, h * f);
        let Self {
            gain,
            cols_inverse,
            rows_inverse,
            columns,
            row,
            scratch,
            planes,
            ..
        } = self;
        for ((zr, zi), plane) in re
            .chunks_exact(hf)
            .zip(im.chunks_exact(hf))
            .zip(planes.chunks_exact_mut(hw))
        {
            for ky in 0..h {
                let j = ky * f;
                for (kx, ((r, i), g)) in zr[j..j + f].iter().zip(&zi[j..j + f]).zip(&gain[j..j + f]).enumerate() {
                    columns[kx * h + ky] = Complex::new(g * r, g * i);
                }
            }
            cols_inverse.process_with_scratch(columns, scratch);
            for (y, line) in plane.chunks_exact_mut(w).enumerate() {
                for (kx, v) in row.iter_mut().enumerate() {
                    *v = columns[kx * h + y];
                }
                // What the Hermitian extension leaves real (numpy's irfft drops these too).
                row[0].im = 0.0;
                if w % 2 == 0 {
                    row[f - 1].im = 0.0;
                }
                // Lengths match the plan by construction; the imaginary parts it checks are zero.
                let done = rows_inverse.process_with_scratch(row, line, scratch);
                debug_assert!(done.is_ok(), "{done:?}");
            }
        }
        let n = self.channels;
        for (k, out) in image.chunks_exact_mut(hw).enumerate() {
            out.copy_from_slice(&self.offset[k * hw..(k + 1) * hw]);
            for (c, plane) in self.planes.chunks_exact(hw).enumerate() {
                let m = self.mix[k * n + c];
                if m != 0.0 {
                    for (v, s) in out.iter_mut().zip(plane) {
                        *v += m * s;
                    }
                }
            }
            for v in out.iter_mut() {
                *v = sigmoid(*v);
            }
        }
    }

    /// The gradient with respect to the spectrum's real and imaginary parts of a function whose
    /// gradient with respect to [`Self::image`]'s output `image` is `grad` (the adjoint of each step).
    fn backward(&mut self, image: &[f32], grad: &[f32], d_re: &mut [f32], d_im: &mut [f32]) {
        let (h, w, f) = (self.h, self.w, self.f);
        let (hw, hf, n) = (h * w, h * f, self.channels);
        // Through the sigmoid, then the colour mix (transposed).
        for ((p, g), s) in self.pre.iter_mut().zip(grad).zip(image) {
            *p = g * s * (1.0 - s);
        }
        for (c, plane) in self.planes.chunks_exact_mut(hw).enumerate() {
            plane.fill(0.0);
            for (k, pre) in self.pre.chunks_exact(hw).enumerate() {
                let m = self.mix[k * n + c];
                if m != 0.0 {
                    for (d, p) in plane.iter_mut().zip(pre) {
                        *d += m * p;
                    }
                }
            }
        }
        let Self {
            back_gain,
            cols_forward,
            rows_forward,
            columns,
            row,
            line,
            scratch,
            planes,
            ..
        } = self;
        for ((plane, zr), zi) in planes
            .chunks_exact(hw)
            .zip(d_re.chunks_exact_mut(hf))
            .zip(d_im.chunks_exact_mut(hf))
        {
            // The adjoint of the complex-to-real step: a real-to-complex FFT of each row (its
            // column weights are in `back_gain`).
            for (y, src) in plane.chunks_exact(w).enumerate() {
                // The transform uses its input as scratch.
                line.copy_from_slice(src);
                let done = rows_forward.process_with_scratch(line, row, scratch);
                debug_assert!(done.is_ok(), "{done:?}");
                for (kx, v) in row.iter().enumerate() {
                    columns[kx * h + y] = *v;
                }
            }
            // The adjoint of the inverse FFT down each column is the forward one.
            cols_forward.process_with_scratch(columns, scratch);
            for ky in 0..h {
                let j = ky * f;
                for (kx, ((r, i), g)) in zr[j..j + f]
                    .iter_mut()
                    .zip(&mut zi[j..j + f])
                    .zip(&back_gain[j..j + f])
                    .enumerate()
                {
                    let v = columns[kx * h + ky];
                    *r = v.re * g;
                    *i = v.im * g;
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

/// A view's bilinear taps over an `h x w` image, computed once per view and read by both the view
/// and its adjoint: for each output pixel, the four source pixels it reads with their weights, and
/// what the taps that fall outside the image add (0.5 times their weights; their own weight is 0
/// and their index 0, so that neither direction branches).
struct Sampling {
    h: usize,
    w: usize,
    at: Vec<[u32; 4]>,
    weight: Vec<[f32; 4]>,
    outside: Vec<f32>,
}

impl Sampling {
    /// Room for the taps of an `h x w` image (at most [`MAX_PIXELS`], so indices fit in `u32`).
    fn new(h: usize, w: usize) -> Self {
        let hw = h * w;
        Self {
            h,
            w,
            at: vec![[0; 4]; hw],
            weight: vec![[0.0; 4]; hw],
            outside: vec![0.0; hw],
        }
    }

    /// The taps of `view`.
    fn set(&mut self, view: &View) {
        let (h, w) = (self.h, self.w);
        let (cx, cy) = ((w as f32 - 1.0) / 2.0, (h as f32 - 1.0) / 2.0);
        let (wf, hf) = (w as f32, h as f32);
        let mut p = 0;
        for y in 0..h {
            let oy = y as f32 - cy - view.t[1];
            for x in 0..w {
                let ox = x as f32 - cx - view.t[0];
                let sx = view.m[0] * ox + view.m[1] * oy + cx;
                let sy = view.m[2] * ox + view.m[3] * oy + cy;
                let (x0, y0) = (sx.floor(), sy.floor());
                let (fx, fy) = (sx - x0, sy - y0);
                let taps = [
                    (x0, y0, (1.0 - fx) * (1.0 - fy)),
                    (x0 + 1.0, y0, fx * (1.0 - fy)),
                    (x0, y0 + 1.0, (1.0 - fx) * fy),
                    (x0 + 1.0, y0 + 1.0, fx * fy),
                ];
                let mut outside = 0f32;
                for (t, (xi, yi, wt)) in taps.into_iter().enumerate() {
                    if xi >= 0.0 && yi >= 0.0 && xi < wf && yi < hf {
                        self.at[p][t] = (yi as usize * w + xi as usize) as u32;
                        self.weight[p][t] = wt;
                    } else {
                        self.at[p][t] = 0;
                        self.weight[p][t] = 0.0;
                        outside += 0.5 * wt;
                    }
                }
                self.outside[p] = outside;
                p += 1;
            }
        }
    }

    /// The view of `image` (planes of `h x w`) into `out`, as long.
    fn apply(&self, image: &[f32], out: &mut [f32]) {
        let hw = self.h * self.w;
        for (plane, out) in image.chunks_exact(hw).zip(out.chunks_exact_mut(hw)) {
            for (((o, at), wt), base) in out.iter_mut().zip(&self.at).zip(&self.weight).zip(&self.outside) {
                let tap = |t: usize| wt[t] * plane.get(at[t] as usize).copied().unwrap_or(0.0);
                *o = base + tap(0) + tap(1) + tap(2) + tap(3);
            }
        }
    }

    /// The adjoint of [`Self::apply`]: the gradient on the image of `grad` on the view, into `out`.
    fn adjoint(&self, grad: &[f32], out: &mut [f32]) {
        let hw = self.h * self.w;
        for (g, out) in grad.chunks_exact(hw).zip(out.chunks_exact_mut(hw)) {
            out.fill(0.0);
            for ((g, at), wt) in g.iter().zip(&self.at).zip(&self.weight) {
                for t in 0..4 {
                    if let Some(o) = out.get_mut(at[t] as usize) {
                        *o += wt[t] * g;
                    }
                }
            }
        }
    }
}

/// The model's input for an image in [0, 1] (`[k][y][x]`), and the factor per channel from the
/// image to it (its derivative).
fn to_input(spec: &ImageSpec, image: &[f32]) -> (Tensor, Vec<f32>) {
    let (c, h, w) = (spec.channels, spec.height, spec.width);
    let mut data = vec![0f32; c * h * w];
    write_input(spec, image, &mut data);
    let shape = match spec.layout {
        Layout::NCHW => vec![1, c, h, w],
        Layout::NHWC => vec![1, h, w, c],
    };
    (Tensor::f32(shape, data), input_factor(spec))
}

/// Per channel, the derivative of the model's input by the image's value.
fn input_factor(spec: &ImageSpec) -> Vec<f32> {
    (0..spec.channels)
        .map(|k| 255.0 * spec.scale / spec.std.get(k).copied().unwrap_or(1.0))
        .collect()
}

/// [`to_input`]'s values into `data`, in the model's layout.
fn write_input(spec: &ImageSpec, image: &[f32], data: &mut [f32]) {
    let c = spec.channels;
    let hw = spec.height * spec.width;
    for (k, (plane, factor)) in image.chunks_exact(hw).zip(input_factor(spec)).enumerate() {
        let mean = spec.mean.get(k).copied().unwrap_or(0.0) / spec.std.get(k).copied().unwrap_or(1.0);
        match spec.layout {
            Layout::NCHW => {
                for (d, v) in data[k * hw..(k + 1) * hw].iter_mut().zip(plane) {
                    *d = v * factor - mean;
                }
            }
            Layout::NHWC => {
                for (d, v) in data.iter_mut().skip(k).step_by(c).zip(plane) {
                    *d = v * factor - mean;
                }
            }
        }
    }
}

/// The model input's gradient `grad` (the model's layout) as the gradient on the image it was
/// made from ([`to_input`]), `[k][y][x]`, into `out`.
fn input_to_image(spec: &ImageSpec, grad: &[f32], out: &mut [f32]) {
    let c = spec.channels;
    let hw = spec.height * spec.width;
    for (k, (plane, factor)) in out.chunks_exact_mut(hw).zip(input_factor(spec)).enumerate() {
        match spec.layout {
            Layout::NCHW => match grad.get(k * hw..(k + 1) * hw) {
                Some(g) => plane.iter_mut().zip(g).for_each(|(o, g)| *o = g * factor),
                None => plane.fill(0.0),
            },
            Layout::NHWC => {
                plane.fill(0.0);
                for (o, g) in plane.iter_mut().zip(grad.iter().skip(k).step_by(c)) {
                    *o = g * factor;
                }
            }
        }
    }
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

/// The total-variation and L2 penalties of an image in [0, 1] (`[k][y][x]`), weighted, with their
/// gradient added to `grad` (negated: the objective is maximised).
fn penalties(
    p: &ActivationMaximisationParams,
    image: &[f32],
    channels: usize,
    h: usize,
    w: usize,
    grad: &mut [f32],
) -> f64 {
    let mut total = 0f64;
    if p.total_variation > 0.0 {
        let weight = p.total_variation;
        let mut tv = 0f64;
        for c in 0..channels {
            let base = c * h * w;
            for y in 0..h {
                for x in 0..w {
                    let i = base + y * w + x;
                    for j in [(x + 1 < w).then_some(i + 1), (y + 1 < h).then_some(i + w)]
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
        let norm = (1e-6 + image.iter().map(|v| (*v as f64).powi(2)).sum::<f64>()).sqrt();
        for (g, v) in grad.iter_mut().zip(image) {
            *g -= p.l2 * (*v as f64 / norm) as f32;
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
        for (((x, g), m), v) in x.iter_mut().zip(g).zip(self.m.iter_mut()).zip(self.v.iter_mut()) {
            *m = Self::BETA1 * *m + (1.0 - Self::BETA1) * g;
            *v = Self::BETA2 * *v + (1.0 - Self::BETA2) * g * g;
            *x += step * *m / (v.sqrt() * root + Self::EPS);
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
    let (c, h, w) = (spec.channels, spec.height, spec.width);
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
    let (mut input, _) = to_input(spec, &param.image(&re, &im));
    let initial_score = score_of(cx, job, &input, target, channel)?;
    let weights = one_hot(&[target.index], crate::common::detection_targets::width(&job.model));
    // Every step works in these buffers (and the parametrisation's own): it allocates nothing
    // but what the pass answers.
    let len = param.image_len();
    let (mut image, mut seen, mut d_seen, mut d_image) =
        (vec![0f32; len], vec![0f32; len], vec![0f32; len], vec![0f32; len]);
    let mut sampling = Sampling::new(h, w);
    sampling.set(&View::IDENTITY);
    let mut curve = Vec::with_capacity(p.iterations);
    for _ in 0..p.iterations {
        cx.checkpoint()?;
        param.synthesise(&re, &im, &mut image);
        if p.transforms {
            sampling.set(&View::draw(&mut rng, h.max(w)));
        }
        sampling.apply(&image, &mut seen);
        if let TensorData::F32(values) = &mut input.data {
            write_input(spec, &seen, values);
        }
        let (score, grad) = objective(cx, &input, target, &weights, channel)?;
        // The input gradient back to the view's pixels, then to the image's.
        input_to_image(spec, grad.as_f32().unwrap_or(&[]), &mut d_seen);
        sampling.adjoint(&d_seen, &mut d_image);
        let penalty = penalties(p, &image, c, h, w, &mut d_image);
        curve.push(score - penalty);
        param.backward(&image, &d_image, &mut d_re, &mut d_im);
        adam_re.step(&mut re, &d_re);
        adam_im.step(&mut im, &d_im);
    }
    let image = param.image(&re, &im);
    let (input, _) = to_input(spec, &image);
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
    /// differences (seed printed on failure).
    #[test]
    fn the_parametrisation_s_gradient_matches_finite_differences() {
        for (channels, side) in [(1, 6), (3, 5)] {
            let spec = spec(channels, side);
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
            // f = sum(weights * view(image)).
            let f = |param: &mut FourierImage, re: &[f32], im: &[f32]| -> f64 {
                let mut seen = vec![0f32; len];
                sampling.apply(&param.image(re, im), &mut seen);
                seen.iter().zip(&weights).map(|(a, b)| (*a as f64) * (*b as f64)).sum()
            };
            let image = param.image(&re, &im);
            let mut d_image = vec![0f32; len];
            sampling.adjoint(&weights, &mut d_image);
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
                        "seed {seed}, channels {channels}, value {i}.{which}: numeric {numeric}, analytic {analytic}"
                    );
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
            param.backward(&image, &g, &mut d_re, &mut d_im);
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
