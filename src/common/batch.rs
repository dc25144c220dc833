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
    let base = row * h * w * c;
    let mut map = vec![0f32; h * w];
    for y in 0..h {
        for x in 0..w {
            let mut acc = 0f32;
            for ch in 0..c {
                let v = values[base
                    + match spec.layout {
                        Layout::NCHW => ch * h * w + y * w + x,
                        Layout::NHWC => (y * w + x) * c + ch,
                    }];
                acc = match fold {
                    Fold::MaxAbs => acc.max(v.abs()),
                    Fold::Sum => acc + v,
                };
            }
            map[y * w + x] = acc;
        }
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
