//! Image and map resizing with `fast_image_resize` (SIMD convolution): the decode-resize-normalise
//! step before a model pass and the map drawn back over the original image sit on every image
//! request's path, where `image`'s generic resize took 2 ms of a 224x224 input on its own.

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};

/// How pixels are interpolated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// Bilinear (a triangle filter, widened when shrinking so every source pixel counts).
    Bilinear,
    /// Nearest neighbour.
    Nearest,
}

impl Filter {
    fn alg(self) -> ResizeAlg {
        match self {
            Filter::Bilinear => ResizeAlg::Convolution(FilterType::Bilinear),
            Filter::Nearest => ResizeAlg::Nearest,
        }
    }
}

/// A region of an image: left, top, width, height, in pixels.
pub type Region = (u32, u32, u32, u32);

/// `region` of `src` resized to `width x height`. The region is cut out first, so its edges clamp
/// as an image's own do (a crop box inside the resizer would sample the pixels beyond it).
pub fn rgb(src: &image::RgbImage, region: Region, width: u32, height: u32, filter: Filter) -> image::RgbImage {
    let (left, top, w, h) = region;
    // Already the size asked (a 28x28 image for a 28x28 model): resampling would copy it.
    if (left, top, w, h, width, height) == (0, 0, src.width(), src.height(), src.width(), src.height()) {
        return src.clone();
    }
    let cropped = image::imageops::crop_imm(src, left, top, w, h).to_image();
    let resized = ImageRef::new(cropped.width(), cropped.height(), cropped.as_raw(), PixelType::U8x3)
        .ok()
        .and_then(|view| resize(&view, width, height, filter))
        .and_then(|dst| image::RgbImage::from_raw(width, height, dst.into_vec()));
    // The views are sized from the image itself, so this is unreachable; the slow path keeps the
    // answer right if it ever is not.
    resized.unwrap_or_else(|| image::imageops::resize(&cropped, width, height, image::imageops::FilterType::Triangle))
}

/// A `[h, w]` map of `f32` resized to `[to_h, to_w]`, bilinear.
pub fn map(values: &[f32], w: usize, h: usize, to_w: usize, to_h: usize) -> Vec<f32> {
    let (Ok(w32), Ok(h32), Ok(to_w32), Ok(to_h32)) = (
        u32::try_from(w),
        u32::try_from(h),
        u32::try_from(to_w),
        u32::try_from(to_h),
    ) else {
        return vec![0.0; to_w.saturating_mul(to_h)];
    };
    let resized = ImageRef::new(w32, h32, bytemuck::cast_slice(values), PixelType::F32)
        .ok()
        .and_then(|view| resize(&view, to_w32, to_h32, Filter::Bilinear))
        .map(|dst| bytemuck::pod_collect_to_vec::<u8, f32>(dst.buffer()));
    resized.unwrap_or_else(|| vec![0.0; to_w * to_h])
}

/// `view` resized to `width x height`, in its own pixel type.
fn resize(view: &ImageRef, width: u32, height: u32, filter: Filter) -> Option<Image<'static>> {
    let mut dst = Image::new(width, height, view.pixel_type());
    let options = ResizeOptions::new().resize_alg(filter.alg());
    Resizer::new().resize(view, &mut dst, &options).ok()?;
    Some(dst)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against `image`'s resize, the reference it replaces: the same pixels for nearest, within
    /// one level of 255 for bilinear, 1e-4 of the range for maps, shrinking and enlarging.
    #[test]
    fn agrees_with_image_triangle_filter() {
        let src = image::RgbImage::from_fn(320, 213, |x, y| {
            image::Rgb([(x * 7 % 256) as u8, (y * 5 % 256) as u8, ((x * y) % 251) as u8])
        });
        let cases = [
            (
                (48, 0, 213, 213),
                (224, 224),
                Filter::Bilinear,
                image::imageops::FilterType::Triangle,
            ),
            (
                (0, 0, 320, 213),
                (640, 400),
                Filter::Bilinear,
                image::imageops::FilterType::Triangle,
            ),
            (
                (48, 0, 213, 213),
                (224, 224),
                Filter::Nearest,
                image::imageops::FilterType::Nearest,
            ),
            (
                (0, 0, 320, 213),
                (28, 28),
                Filter::Nearest,
                image::imageops::FilterType::Nearest,
            ),
        ];
        for (region, size, filter, reference) in cases {
            let ours = rgb(&src, region, size.0, size.1, filter);
            let cropped = image::imageops::crop_imm(&src, region.0, region.1, region.2, region.3).to_image();
            let theirs = image::imageops::resize(&cropped, size.0, size.1, reference);
            let worst = ours
                .as_raw()
                .iter()
                .zip(theirs.as_raw())
                .map(|(a, b)| (i16::from(*a) - i16::from(*b)).abs())
                .max();
            let allowed = if filter == Filter::Nearest { 0 } else { 1 };
            assert!(
                worst <= Some(allowed),
                "{region:?} -> {size:?} {filter:?}: off by {worst:?}"
            );
        }
        let values: Vec<f32> = (0..14 * 9).map(|i| ((i * 37) % 101) as f32 / 101.0).collect();
        for (to_w, to_h) in [(224, 150), (7, 5)] {
            let ours = map(&values, 14, 9, to_w, to_h);
            let buffer = image::ImageBuffer::<image::Luma<f32>, Vec<f32>>::from_raw(14, 9, values.clone()).unwrap();
            let theirs =
                image::imageops::resize(&buffer, to_w as u32, to_h as u32, image::imageops::FilterType::Triangle);
            for (a, b) in ours.iter().zip(theirs.as_raw()) {
                assert!((a - b).abs() < 1e-4, "{to_w}x{to_h}: {a} vs {b}");
            }
        }
    }
}
