//! Superpixels for the segment-based methods (LIME now, KernelSHAP next): SLIC on the model's input
//! image, relabelled to contiguous ids.

use super::perturb::index;
use super::regression::Check;
use crate::runtime::manifest::ImageSpec;
use crate::runtime::{RuntimeError, Tensor};

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

/// SLIC superpixels: one id per pixel (row-major), ids `0..count`. `check` runs between its steps.
pub(super) fn slic(
    input: &Tensor,
    spec: &ImageSpec,
    segments: u32,
    compactness: u8,
    check: &Check,
) -> Result<(Vec<usize>, usize), RuntimeError> {
    let bytes = rgb_bytes(input, spec);
    let labels = super::slic::slic(
        segments.max(1),
        compactness,
        spec.width as u32,
        spec.height as u32,
        &bytes,
        check,
    )?;
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

/// One candidate region of a multi-scale over-segmentation: a segment, dilated.
pub(super) struct Region {
    /// Its pixels (row-major indices), in increasing order.
    pub pixels: Vec<u32>,
    /// The segments asked of the segmentation it came from.
    pub scale: u32,
}

/// Every segment of SLIC at each of `counts` (each at most a quarter of the pixels, so segments
/// keep a few pixels), dilated by a disk of `radius` pixels (skimage's `disk`: the offsets within
/// Euclidean distance `radius`) as XRAI dilates its segments so that regions take in their edges;
/// with the segments each segmentation gave. `checkpoint` runs between segmentations.
pub(super) fn multiscale(
    input: &Tensor,
    spec: &ImageSpec,
    (counts, compactness): (&[u32], u8),
    radius: usize,
    checkpoint: &Check,
) -> Result<(Vec<Region>, Vec<usize>), RuntimeError> {
    let (h, w) = (spec.height, spec.width);
    let most = (h * w / 4).max(2) as u32;
    let r = radius as isize;
    let disk: Vec<(isize, isize)> = (-r..=r)
        .flat_map(|dy| (-r..=r).map(move |dx| (dy, dx)))
        .filter(|(dy, dx)| dy * dy + dx * dx <= r * r)
        .collect();
    let mut regions = Vec::new();
    let mut given = Vec::new();
    let mut done = Vec::new();
    for &asked in counts {
        let count = asked.min(most);
        // Two scales clamped to the same count give the same segments.
        if done.contains(&count) {
            continue;
        }
        done.push(count);
        checkpoint()?;
        let (labels, m) = slic(input, spec, count, compactness, checkpoint)?;
        given.push(m);
        let mut members: Vec<Vec<u32>> = vec![Vec::new(); m];
        // The labels seen around each pixel, once each (stamped with the pixel).
        let mut seen = vec![usize::MAX; m];
        for y in 0..h {
            for x in 0..w {
                let p = y * w + x;
                for (dy, dx) in &disk {
                    let (yy, xx) = (y as isize + dy, x as isize + dx);
                    if yy < 0 || xx < 0 || yy >= h as isize || xx >= w as isize {
                        continue;
                    }
                    let l = labels[yy as usize * w + xx as usize];
                    if seen[l] != p {
                        seen[l] = p;
                        members[l].push(p as u32);
                    }
                }
            }
        }
        regions.extend(members.into_iter().map(|pixels| Region { pixels, scale: count }));
    }
    Ok((regions, given))
}
