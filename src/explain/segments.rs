//! Superpixels for the segment-based methods (LIME now, KernelSHAP next): SLIC on the model's input
//! image, relabelled to contiguous ids.

use super::perturb::index;
use crate::runtime::manifest::ImageSpec;
use crate::runtime::preprocess::InputError;
use crate::runtime::Tensor;

/// The input image back in 0-255 RGB bytes (undoing the normalisation), `height x width x 3`.
pub(super) fn rgb_bytes(input: &Tensor, spec: &ImageSpec) -> Vec<u8> {
    let x = input.as_f32().unwrap_or(&[]);
    let (h, w, c) = (spec.height, spec.width, spec.channels);
    let mut out = Vec::with_capacity(h * w * 3);
    for y in 0..h {
        for xx in 0..w {
            for k in 0..3 {
                let ch = if c == 1 { 0 } else { k };
                let v = (x[index(spec, ch, y, xx)] * spec.std[ch] + spec.mean[ch]) / spec.scale;
                out.push(v.round().clamp(0.0, 255.0) as u8);
            }
        }
    }
    out
}

/// SLIC superpixels: one id per pixel (row-major), ids `0..count`.
pub(super) fn slic(
    input: &Tensor,
    spec: &ImageSpec,
    segments: u32,
    compactness: u8,
) -> Result<(Vec<usize>, usize), InputError> {
    let bytes = rgb_bytes(input, spec);
    let labels = simple_clustering::slic_from_bytes(
        segments.max(1),
        compactness,
        spec.width as u32,
        spec.height as u32,
        None,
        &bytes,
    )
    .map_err(|e| InputError::BadFeatures(format!("superpixel segmentation failed: {e}")))?;
    // Contiguous ids in order of first appearance.
    let mut map = std::collections::HashMap::new();
    let relabelled: Vec<usize> = labels
        .iter()
        .map(|l| {
            let next = map.len();
            *map.entry(*l).or_insert(next)
        })
        .collect();
    Ok((relabelled, map.len()))
}
