//! Building and reading batches of model rows: fallible zeroed buffers, repeated rows, one-hot
//! target weights, and folding an image attribution's channels into a map.

use crate::runtime::manifest::{ImageSpec, Layout};
use crate::runtime::{RuntimeError, Tensor};

/// A zeroed batch buffer of `len` values, reserved fallibly: a plan's byte budget holds in code,
/// and an allocation the machine cannot give fails the job, not the process.
pub fn zeroed_batch(model: &str, len: usize) -> Result<Vec<f32>, RuntimeError> {
    let mut data = Vec::new();
    data.try_reserve_exact(len).map_err(|e| RuntimeError::Inference {
        model: model.to_string(),
        message: format!("cannot reserve a batch of {len} values: {e}"),
    })?;
    data.resize(len, 0f32);
    Ok(data)
}

/// `rows` copies of a one-row tensor.
pub fn repeat_rows(t: &Tensor, rows: usize) -> Tensor {
    let one = t.as_f32().unwrap_or(&[]);
    let mut data = Vec::with_capacity(one.len() * rows);
    for _ in 0..rows {
        data.extend_from_slice(one);
    }
    let mut shape = t.shape.clone();
    if let Some(first) = shape.first_mut() {
        *first = rows;
    }
    Tensor::f32(shape, data)
}

/// Per-row one-hot weights over `classes` outputs: row r targets `indices[r]`.
pub fn one_hot(indices: &[usize], classes: usize) -> Tensor {
    let mut data = vec![0f32; indices.len() * classes];
    for (r, &i) in indices.iter().enumerate() {
        data[r * classes + i] = 1.0;
    }
    Tensor::f32(vec![indices.len(), classes], data)
}

/// How to fold an image attribution's channels into one map.
#[derive(Debug, Clone, Copy)]
pub enum Fold {
    /// Largest absolute value over channels (Simonyan et al.'s saliency map).
    MaxAbs,
    /// Sum over channels (keeps the sign).
    Sum,
}

/// Folds row `row` of an image-shaped tensor `[N, ...]` into a `[height, width]` map.
pub fn fold_channels(t: &Tensor, row: usize, spec: &ImageSpec, fold: Fold) -> Tensor {
    let values = t.as_f32().unwrap_or(&[]);
    let (h, w, c) = (spec.height, spec.width, spec.channels);
    let plane = h * w;
    let base = row * plane * c;
    let mut map = vec![0f32; plane];
    let fold_in = |acc: &mut f32, v: f32| {
        *acc = match fold {
            Fold::MaxAbs => acc.max(v.abs()),
            Fold::Sum => *acc + v,
        }
    };
    match (spec.layout, values.get(base..base + plane * c)) {
        // Channels-first: each channel's plane folded into the map along memory (a 640 x 640 map
        // took milliseconds pixel by pixel).
        (Layout::NCHW, Some(image)) => {
            for channel in image.chunks_exact(plane) {
                for (acc, v) in map.iter_mut().zip(channel) {
                    fold_in(acc, *v);
                }
            }
        }
        (Layout::NHWC, Some(image)) if c > 0 => {
            for (acc, pixel) in map.iter_mut().zip(image.chunks_exact(c)) {
                for v in pixel {
                    fold_in(acc, *v);
                }
            }
        }
        // A row the tensor does not hold (no values) folds to zeros.
        _ => {}
    }
    Tensor::f32(vec![h, w], map)
}

/// Row `row` of a tensor without the batch axis.
pub fn row(t: &Tensor, row: usize) -> Tensor {
    let mut r = t.slice_rows(row, row + 1);
    r.shape.remove(0);
    r
}

/// Index of (channel, y, x) in one image row.
pub fn pixel_index(spec: &ImageSpec, ch: usize, y: usize, x: usize) -> usize {
    let (h, w, c) = (spec.height, spec.width, spec.channels);
    match spec.layout {
        Layout::NCHW => ch * h * w + y * w + x,
        Layout::NHWC => (y * w + x) * c + ch,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::manifest::{ColorOrder, Fit, ResizeFilter};

    fn spec(layout: Layout) -> ImageSpec {
        ImageSpec {
            layout,
            width: 3,
            height: 2,
            channels: 3,
            color: ColorOrder::Rgb,
            resize: ResizeFilter::Nearest,
            fit: Fit::Stretch,
            pad: 0,
            scale: 1.0,
            mean: vec![0.0; 3],
            std: vec![1.0; 3],
        }
    }

    /// Each pixel folds its three channels, in either layout, for the row asked; a row the tensor
    /// does not hold folds to zeros.
    #[test]
    fn channels_fold_per_pixel_in_both_layouts() {
        // Row 1 of two: channel c of pixel p is (c + 1) * (p + 1), negated on odd pixels.
        let value = |c: usize, p: usize| (c as f32 + 1.0) * (p as f32 + 1.0) * if p % 2 == 1 { -1.0 } else { 1.0 };
        let mut nchw = vec![9.0; 18];
        let mut nhwc = vec![9.0; 18];
        for c in 0..3 {
            for p in 0..6 {
                nchw.push(value(c, p));
            }
        }
        for p in 0..6 {
            for c in 0..3 {
                nhwc.push(value(c, p));
            }
        }
        let max_abs: Vec<f32> = (0..6).map(|p| 3.0 * (p as f32 + 1.0)).collect();
        let sum: Vec<f32> = (0..6).map(|p| value(0, p) + value(1, p) + value(2, p)).collect();
        for (layout, data) in [(Layout::NCHW, nchw), (Layout::NHWC, nhwc)] {
            let t = Tensor::f32(vec![2, 3, 2, 3], data);
            let s = spec(layout);
            let folded = fold_channels(&t, 1, &s, Fold::MaxAbs);
            assert_eq!(folded.shape, vec![2, 3]);
            assert_eq!(folded.as_f32().unwrap(), max_abs.as_slice(), "{layout:?}");
            assert_eq!(fold_channels(&t, 1, &s, Fold::Sum).as_f32().unwrap(), sum.as_slice());
            assert_eq!(fold_channels(&t, 2, &s, Fold::Sum).as_f32().unwrap(), &[0.0; 6]);
        }
    }
}
