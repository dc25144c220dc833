//! Shared pieces of the forward-only (perturbation) methods: presets, image planes, and running
//! many perturbed copies of the input through the model in batches.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::Cx;
pub(super) use crate::common::batch::pixel_index as index;
use crate::runtime::manifest::ImageSpec;
use crate::runtime::{RuntimeError, Tensor};

/// Cost / quality trade-off of a perturbation method, as OpenVINO XAI offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Preset {
    /// Few passes.
    Fast,
    /// The default.
    Balanced,
    /// The papers' settings.
    Quality,
}

/// For each segment, the tensor indices (every channel) of its pixels: switching a segment off is then
/// a copy of those indices only.
pub(super) fn segment_indices(spec: &ImageSpec, labels: &[usize], segments: usize) -> Vec<Vec<usize>> {
    let mut out = vec![Vec::new(); segments];
    for y in 0..spec.height {
        for x in 0..spec.width {
            let s = labels[y * spec.width + x];
            for ch in 0..spec.channels {
                out[s].push(index(spec, ch, y, x));
            }
        }
    }
    out
}

/// Writes the input with the segments `on[s] == false` replaced by `hidden`.
pub(super) fn compose(buf: &mut [f32], x: &[f32], hidden: &[f32], on: &[bool], segments: &[Vec<usize>]) {
    buf.copy_from_slice(x);
    for (s, keep) in on.iter().enumerate() {
        if !keep {
            for &i in &segments[s] {
                buf[i] = hidden[i];
            }
        }
    }
}

/// Runs `rows` perturbed copies (built by `make(row, &mut buffer)`) in batches and returns every
/// row's scores, `[rows][classes]`.
pub(super) fn run_copies(
    cx: &mut Cx,
    input: &Tensor,
    rows: usize,
    mut make: impl FnMut(usize, &mut [f32]),
) -> Result<Vec<Vec<f64>>, RuntimeError> {
    let n = input.as_f32().map(<[f32]>::len).unwrap_or(0);
    let batch = cx.forward_rows();
    let mut scores = Vec::with_capacity(rows);
    let mut start = 0;
    while start < rows {
        let end = (start + batch).min(rows);
        let mut data = super::zeroed_batch(&cx.model().name, (end - start) * n)?;
        for r in start..end {
            make(r, &mut data[(r - start) * n..(r - start + 1) * n]);
        }
        let mut shape = input.shape.clone();
        shape[0] = end - start;
        let out = cx.forward(&Tensor::f32(shape, data))?;
        let classes = out.row_len().max(1);
        let values = out.to_f64();
        scores.extend(values.chunks(classes).map(<[f64]>::to_vec));
        start = end;
    }
    Ok(scores)
}
