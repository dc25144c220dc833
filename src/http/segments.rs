//! A segmenter's answer on the original image: its class map mapped back (nearest pixel) to the
//! image's size, each class's area there, and the mask as a PNG when asked.

use base64::Engine;

use super::error::{ApiError, ProblemKind};
use super::prepare::Prepared;
use crate::common::targets::{Region, RegionMask};
use crate::pixels::region::{rasterize, Shape};
use crate::pixels::Geometry;
use crate::runtime::predict::{ClassArea, SegmentationAnswer};
use crate::runtime::segmentation::ClassMap;
use crate::runtime::LoadedModel;

/// How much of the mask a prediction answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mask {
    /// The areas only.
    Areas,
    /// The areas and the mask as base64 PNG.
    Included,
    /// The areas, and the mask as the answer's PNG.
    Png,
}

/// The answer for `map` on the image `geometry` describes, and the mask's PNG when `mask` asks
/// for it (each pixel its class index plus one, 0 for none; 16-bit past 254 classes).
pub(super) fn answer(
    model: &LoadedModel,
    map: &ClassMap,
    geometry: &Geometry,
    mask: Mask,
) -> (SegmentationAnswer, Option<Vec<u8>>) {
    let (width, height) = (geometry.original_width, geometry.original_height);
    let values = on_original(map, geometry);
    let mut counts = vec![0u64; map.classes];
    for v in values.iter().filter(|v| **v > 0) {
        if let Some(n) = counts.get_mut(*v as usize - 1) {
            *n += 1;
        }
    }
    let total = (values.len() as f64).max(1.0);
    let mut areas: Vec<ClassArea> = counts
        .iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .map(|(i, n)| ClassArea {
            index: i,
            label: model
                .spec
                .labels
                .get(i)
                .cloned()
                .unwrap_or_else(|| format!("class_{i}")),
            pixels: *n,
            share: *n as f64 / total,
        })
        .collect();
    areas.sort_by(|a, b| b.pixels.cmp(&a.pixels).then(a.index.cmp(&b.index)));
    let png = (mask != Mask::Areas).then(|| encode(&values, width, height, map.classes));
    let answer = SegmentationAnswer {
        areas,
        width,
        height,
        mask: match mask {
            Mask::Included => png
                .as_ref()
                .map(|p| base64::engine::general_purpose::STANDARD.encode(p)),
            _ => None,
        },
    };
    (answer, png.filter(|_| mask == Mask::Png))
}

/// The class map on the original image, row-major: class index plus one, 0 for none and outside
/// the region the model saw (a centre crop's margins). Each original pixel takes the class of the
/// output pixel its centre falls in.
fn on_original(map: &ClassMap, g: &Geometry) -> Vec<u16> {
    let (w, h) = (g.original_width as usize, g.original_height as usize);
    let mut out = vec![0u16; w * h];
    if map.width == 0 || map.height == 0 || g.crop_width <= 0.0 || g.crop_height <= 0.0 {
        return out;
    }
    for oy in 0..h {
        let v = (oy as f32 + 0.5 - g.crop_y) / g.crop_height;
        if !(0.0..1.0).contains(&v) {
            continue;
        }
        let y = ((v * map.height as f32) as usize).min(map.height - 1);
        for ox in 0..w {
            let u = (ox as f32 + 0.5 - g.crop_x) / g.crop_width;
            if !(0.0..1.0).contains(&u) {
                continue;
            }
            let x = ((u * map.width as f32) as usize).min(map.width - 1);
            out[oy * w + ox] = map.pixels[y * map.width + x].map_or(0, |c| c.saturating_add(1));
        }
    }
    out
}

/// A grayscale PNG of `values` (8-bit when every value fits).
fn encode(values: &[u16], width: u32, height: u32, classes: usize) -> Vec<u8> {
    let mut png = Vec::new();
    let written = if classes < 255 {
        let bytes: Vec<u8> = values.iter().map(|v| *v as u8).collect();
        image::GrayImage::from_raw(width, height, bytes)
            .map(|img| img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png))
    } else {
        image::ImageBuffer::<image::Luma<u16>, Vec<u16>>::from_raw(width, height, values.to_vec())
            .map(|img| img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png))
    };
    match written {
        Some(Ok(())) => png,
        _ => Vec::new(),
    }
}

/// The caller's `region` on the model's input grid for the image `prepared` holds: the faults
/// (a box outside the image, a mask of another size, an empty region) as 422 problems naming them.
pub(super) fn region_on_input(
    model: &LoadedModel,
    region: &Region,
    prepared: &Prepared,
) -> Result<RegionMask, ApiError> {
    let (Some(spec), Some(geometry)) = (model.spec.image.as_ref(), prepared.geometry.as_ref()) else {
        return Err(ApiError::new(
            ProblemKind::InvalidInput,
            "a `region` is drawn on an image: send the image itself",
        ));
    };
    let unfit = |m: String| ApiError::new(ProblemKind::InvalidInput, m);
    let grid = (spec.width, spec.height);
    let inside = match region {
        Region::Box(b) => rasterize(&Shape::Box(*b), geometry, grid),
        Region::Polygon(p) => rasterize(&Shape::Polygon(p), geometry, grid),
        Region::Mask(b64) => {
            let bytes = crate::http::input::decode_base64_image(b64)?;
            let pixels = u64::from(geometry.original_width) * u64::from(geometry.original_height);
            let image = crate::runtime::preprocess::decode_image(&bytes, pixels)
                .map_err(|e| unfit(format!("region.mask: {e}")))?
                .into_luma8();
            let bits: Vec<bool> = image.pixels().map(|p| p.0[0] > 0).collect();
            rasterize(&Shape::Mask(image.width(), image.height(), &bits), geometry, grid)
        }
    }
    .map_err(unfit)?;
    Ok(RegionMask {
        width: spec.width,
        height: spec.height,
        inside,
    })
}
