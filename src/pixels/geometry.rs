//! Where a model's input pixels came from in the original image, and maps carried between the
//! two grids: the crop and resize of preprocessing, undone for drawing and done for metrics.

use super::resample;

/// Where the model's input pixels came from in the original image, to map results back.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Geometry {
    /// Original width.
    pub original_width: u32,
    /// Original height.
    pub original_height: u32,
    /// Left edge of the region that was resized to the model's input, in original pixels.
    pub crop_x: f32,
    /// Top edge of that region.
    pub crop_y: f32,
    /// Width of that region.
    pub crop_width: f32,
    /// Height of that region.
    pub crop_height: f32,
}

impl Geometry {
    /// Maps a `[height, width]` map over the model's input onto the original image (bilinear; zero
    /// outside the cropped region), at most `max_pixels` large (scaled down, aspect kept).
    /// Returns (width, height, values).
    pub fn map_back(&self, map: &[f32], width: usize, height: usize, max_pixels: u64) -> (u32, u32, Vec<f32>) {
        let (mut ow, mut oh) = (self.original_width, self.original_height);
        let mut scale = 1.0f32;
        let pixels = ow as u64 * oh as u64;
        if pixels > max_pixels {
            scale = (max_pixels as f32 / pixels as f32).sqrt();
            ow = ((ow as f32 * scale).floor() as u32).max(1);
            oh = ((oh as f32 * scale).floor() as u32).max(1);
        }
        let cw = ((self.crop_width * scale).round() as u32).max(1);
        let ch = ((self.crop_height * scale).round() as u32).max(1);
        let values = resample::map(map, width, height, cw as usize, ch as usize);
        let resized = image::ImageBuffer::<image::Luma<f32>, Vec<f32>>::from_raw(cw, ch, values)
            .unwrap_or_else(|| image::ImageBuffer::new(cw, ch));
        let mut canvas = image::ImageBuffer::<image::Luma<f32>, Vec<f32>>::new(ow, oh);
        image::imageops::replace(
            &mut canvas,
            &resized,
            (self.crop_x * scale).round() as i64,
            (self.crop_y * scale).round() as i64,
        );
        (ow, oh, canvas.into_raw())
    }

    /// The other way: a map over the original image (`original_width x original_height`) brought
    /// onto the model's `width x height` input grid through the same crop, each model pixel the
    /// average of the original pixels its area covers (weighted by the overlap): a map constant
    /// over the original pixels behind each model pixel comes back exactly.
    pub fn map_forward(&self, map: &[f32], width: usize, height: usize) -> Vec<f32> {
        let (ow, oh) = (self.original_width as usize, self.original_height as usize);
        // Per output index, the source indices it covers and by how much.
        let spans = |start: f32, length: f32, out: usize, size: usize| -> Vec<Vec<(usize, f32)>> {
            let step = length / out.max(1) as f32;
            (0..out)
                .map(|u| {
                    let (a, b) = (start + u as f32 * step, start + (u + 1) as f32 * step);
                    let first = (a.floor().max(0.0) as usize).min(size.saturating_sub(1));
                    let last = ((b.ceil() as usize).min(size)).max(first + 1);
                    (first..last)
                        .map(|i| (i, (b.min(i as f32 + 1.0) - a.max(i as f32)).max(0.0)))
                        .filter(|(_, w)| *w > 0.0)
                        .collect()
                })
                .collect()
        };
        let xs = spans(self.crop_x, self.crop_width, width, ow);
        let ys = spans(self.crop_y, self.crop_height, height, oh);
        let mut out = Vec::with_capacity(width * height);
        for row in &ys {
            for col in &xs {
                let (mut sum, mut weight) = (0f64, 0f64);
                for &(y, wy) in row {
                    for &(x, wx) in col {
                        let w = f64::from(wx * wy);
                        sum += w * f64::from(map.get(y * ow + x).copied().unwrap_or(0.0));
                        weight += w;
                    }
                }
                out.push(if weight > 0.0 { (sum / weight) as f32 } else { 0.0 });
            }
        }
        out
    }
}
