//! Reference inputs: what "absence" means for an image or a row (Integrated Gradients, occlusion,
//! DeepLIFT, the faithfulness metrics).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::runtime::manifest::{ImageSpec, Layout};
use crate::runtime::Tensor;

/// A baseline, built in the model's input space (after preprocessing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Baseline {
    /// Black image (pixel 0), or all-zero features.
    Black,
    /// White image (pixel 255).
    White,
    /// The input blurred (Gaussian, sigma 5% of the larger side).
    Blur,
    /// Uniform noise over the pixel range (seeded).
    Uniform,
    /// Images: the input's per-channel mean. Tabular models: the mean row of the manifest's
    /// background data (then IG's attributions sum to f(x) minus f at the average input), or zeros
    /// without background data.
    Mean,
    /// Text models, and only they: every token but the special ones (`[CLS]`, `[SEP]`) replaced by
    /// the model's baseline token (`text.baseline_token`, default the pad token), as in Captum's
    /// BERT tutorial. What a text model's `black` (the default) stands for.
    Token,
}

/// The baseline for `input` of `model`: [`build`] for images; for tabular models zeros, or with
/// `Mean` the background data's mean row.
pub fn for_model(baseline: Baseline, input: &Tensor, model: &crate::runtime::LoadedModel, seed: u64) -> Tensor {
    let image = model.spec.image.as_ref();
    match (image, baseline, model.background.as_ref()) {
        (None, Baseline::Mean, Some(rows)) if !rows.is_empty() => {
            let n = rows.len() as f64;
            let mean: Vec<f32> = (0..rows[0].len())
                .map(|j| (rows.iter().map(|r| f64::from(r[j])).sum::<f64>() / n) as f32)
                .collect();
            Tensor::f32(input.shape.clone(), mean)
        }
        _ => build(baseline, input, image, seed),
    }
}

/// An image tensor's values (one image, `spec`'s layout) with each channel blurred by a Gaussian of
/// standard deviation `sigma` pixels (the input itself when `sigma` is 0).
pub fn blurred(values: &[f32], spec: &ImageSpec, sigma: f32) -> Vec<f32> {
    if sigma <= 0.0 {
        return values.to_vec();
    }
    let (h, w) = (spec.height, spec.width);
    let mut out = vec![0f32; values.len()];
    for ch in 0..spec.channels {
        let mut plane = image::ImageBuffer::<image::Luma<f32>, Vec<f32>>::new(w as u32, h as u32);
        for y in 0..h {
            for x in 0..w {
                plane.put_pixel(
                    x as u32,
                    y as u32,
                    image::Luma([values[super::batch::pixel_index(spec, ch, y, x)]]),
                );
            }
        }
        let smooth = image::imageops::blur(&plane, sigma);
        for y in 0..h {
            for x in 0..w {
                out[super::batch::pixel_index(spec, ch, y, x)] = smooth.get_pixel(x as u32, y as u32).0[0];
            }
        }
    }
    out
}

/// The baseline tensor for `input` ([1, ...]).
pub fn build(baseline: Baseline, input: &Tensor, image: Option<&ImageSpec>, seed: u64) -> Tensor {
    let values = input.as_f32().unwrap_or(&[]);
    let Some(spec) = image else {
        // Tabular: zeros for every choice but the input itself blurred, which makes no sense.
        return Tensor::f32(input.shape.clone(), vec![0.0; values.len()]);
    };
    let pixel = |p: f32, c: usize| (p * spec.scale - spec.mean[c]) / spec.std[c];
    let (h, w, c) = (spec.height, spec.width, spec.channels);
    let index = |ch: usize, y: usize, x: usize| match spec.layout {
        Layout::NCHW => ch * h * w + y * w + x,
        Layout::NHWC => (y * w + x) * c + ch,
    };
    let mut out = vec![0f32; values.len()];
    match baseline {
        // `Token` never reaches an image (plans refuse it): it stands for black there.
        Baseline::Black | Baseline::White | Baseline::Token => {
            let p = if baseline == Baseline::White { 255.0 } else { 0.0 };
            for ch in 0..c {
                for y in 0..h {
                    for x in 0..w {
                        out[index(ch, y, x)] = pixel(p, ch);
                    }
                }
            }
        }
        Baseline::Uniform => {
            use rand::{RngExt, SeedableRng};
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_ba5e);
            for ch in 0..c {
                for y in 0..h {
                    for x in 0..w {
                        out[index(ch, y, x)] = pixel(rng.random_range(0.0..255.0), ch);
                    }
                }
            }
        }
        Baseline::Mean => {
            for ch in 0..c {
                let mut sum = 0f64;
                for y in 0..h {
                    for x in 0..w {
                        sum += values[index(ch, y, x)] as f64;
                    }
                }
                let mean = (sum / (h * w) as f64) as f32;
                for y in 0..h {
                    for x in 0..w {
                        out[index(ch, y, x)] = mean;
                    }
                }
            }
        }
        Baseline::Blur => out = blurred(values, spec, 0.05 * h.max(w) as f32),
    }
    Tensor::f32(input.shape.clone(), out)
}
