//! Letterboxing, as detectors are fed: the whole image scaled by one factor to fit the input,
//! centred (Ultralytics) or at the top-left corner (YOLOX), the rest padded with one grey. As a [`Geometry`] it is a crop region larger than the
//! image (negative origin), so maps and boxes go back and forth through the same arithmetic as a
//! stretch or a centre crop.

use super::resample::{self, Filter};
use super::Geometry;

/// Where the scaled image lies on the `width x height` input: its size and its top-left corner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Letterbox {
    /// Scaled image width.
    pub width: u32,
    /// Scaled image height.
    pub height: u32,
    /// Padding on the left.
    pub left: u32,
    /// Padding on the top.
    pub top: u32,
}

/// Where the scaled image is placed on the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Anchor {
    /// Centred, as Ultralytics' `LetterBox`.
    Centre,
    /// At the top-left corner, as YOLOX's `preproc`.
    TopLeft,
}

impl Letterbox {
    /// The placement of an `ow x oh` image on a `tw x th` input, rounded as the exporter's own
    /// preprocessing does, so a model sees the same pixels where it saw them in training:
    /// centred as Ultralytics' `LetterBox` (`round(w * r)`, `round(pad / 2 - 0.1)`), top-left as
    /// YOLOX's `preproc` (`int(w * r)`, no offset).
    pub fn fit(ow: u32, oh: u32, tw: u32, th: u32, anchor: Anchor) -> Self {
        let r = (tw as f64 / ow.max(1) as f64).min(th as f64 / oh.max(1) as f64);
        let scaled = |side: u32| match anchor {
            Anchor::Centre => (side as f64 * r).round(),
            Anchor::TopLeft => (side as f64 * r).floor(),
        };
        let width = (scaled(ow) as u32).clamp(1, tw.max(1));
        let height = (scaled(oh) as u32).clamp(1, th.max(1));
        let half = |room: u32| match anchor {
            Anchor::Centre => ((room as f64 / 2.0) - 0.1).round().max(0.0) as u32,
            Anchor::TopLeft => 0,
        };
        Self {
            width,
            height,
            left: half(tw - width),
            top: half(th - height),
        }
    }

    /// The geometry of this placement for an `ow x oh` image on a `tw x th` input: the region of
    /// the original, padding included, that the input covers.
    pub fn geometry(&self, ow: u32, oh: u32, tw: u32, th: u32) -> Geometry {
        let (sx, sy) = (ow as f32 / self.width as f32, oh as f32 / self.height as f32);
        Geometry {
            original_width: ow,
            original_height: oh,
            crop_x: -(self.left as f32) * sx,
            crop_y: -(self.top as f32) * sy,
            crop_width: tw as f32 * sx,
            crop_height: th as f32 * sy,
        }
    }
}

/// `src` letterboxed onto a `tw x th` canvas of `pad` grey, with its geometry.
pub fn letterbox(
    src: &image::RgbImage,
    (tw, th): (u32, u32),
    anchor: Anchor,
    pad: u8,
    filter: Filter,
) -> (image::RgbImage, Geometry) {
    let (ow, oh) = src.dimensions();
    let placed = Letterbox::fit(ow, oh, tw, th, anchor);
    let scaled = resample::rgb(src, (0, 0, ow, oh), placed.width, placed.height, filter);
    let mut canvas = image::RgbImage::from_pixel(tw, th, image::Rgb([pad; 3]));
    image::imageops::replace(&mut canvas, &scaled, placed.left as i64, placed.top as i64);
    (canvas, placed.geometry(ow, oh, tw, th))
}

impl Geometry {
    /// A point of the model's `width x height` input grid in original pixels.
    pub fn to_original(&self, (x, y): (f32, f32), width: usize, height: usize) -> (f32, f32) {
        (
            self.crop_x + x * self.crop_width / width.max(1) as f32,
            self.crop_y + y * self.crop_height / height.max(1) as f32,
        )
    }

    /// A point of the original image on the model's `width x height` input grid.
    pub fn to_input(&self, (x, y): (f32, f32), width: usize, height: usize) -> (f32, f32) {
        (
            (x - self.crop_x) * width as f32 / self.crop_width.max(f32::MIN_POSITIVE),
            (y - self.crop_y) * height as f32 / self.crop_height.max(f32::MIN_POSITIVE),
        )
    }

    /// A corner box `[x0, y0, x1, y1]` on the input grid in original pixels, clipped to the image.
    pub fn box_to_original(&self, b: [f32; 4], width: usize, height: usize) -> [f32; 4] {
        let (x0, y0) = self.to_original((b[0], b[1]), width, height);
        let (x1, y1) = self.to_original((b[2], b[3]), width, height);
        let (w, h) = (self.original_width as f32, self.original_height as f32);
        [x0.clamp(0.0, w), y0.clamp(0.0, h), x1.clamp(0.0, w), y1.clamp(0.0, h)]
    }

    /// A corner box in original pixels on the input grid.
    pub fn box_to_input(&self, b: [f32; 4], width: usize, height: usize) -> [f32; 4] {
        let (x0, y0) = self.to_input((b[0], b[1]), width, height);
        let (x1, y1) = self.to_input((b[2], b[3]), width, height);
        [x0, y0, x1, y1]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wide_image_is_padded_above_and_below_and_boxes_come_back() {
        // 640x480 on 640x640: no scaling, 80 rows of pad above and below.
        let placed = Letterbox::fit(640, 480, 640, 640, Anchor::Centre);
        assert_eq!(
            placed,
            Letterbox {
                width: 640,
                height: 480,
                left: 0,
                top: 80
            }
        );
        let g = placed.geometry(640, 480, 640, 640);
        assert_eq!(
            (g.crop_x, g.crop_y, g.crop_width, g.crop_height),
            (0.0, -80.0, 640.0, 640.0)
        );
        assert_eq!(
            g.box_to_original([10.0, 90.0, 20.0, 100.0], 640, 640),
            [10.0, 10.0, 20.0, 20.0]
        );
        assert_eq!(
            g.box_to_input([10.0, 10.0, 20.0, 20.0], 640, 640),
            [10.0, 90.0, 20.0, 100.0]
        );
        // Halved: a 1280x960 image lands the same, at twice the original pixels.
        let g = Letterbox::fit(1280, 960, 640, 640, Anchor::Centre).geometry(1280, 960, 640, 640);
        assert_eq!(
            g.box_to_original([10.0, 90.0, 20.0, 100.0], 640, 640),
            [20.0, 20.0, 40.0, 40.0]
        );
    }

    #[test]
    fn the_canvas_is_padded_with_the_pad_grey() {
        let src = image::RgbImage::from_pixel(4, 2, image::Rgb([200, 10, 10]));
        let (canvas, _) = letterbox(&src, (4, 4), Anchor::Centre, 114, Filter::Nearest);
        assert_eq!(canvas.get_pixel(0, 0).0, [114; 3]);
        assert_eq!(canvas.get_pixel(0, 1).0, [200, 10, 10]);
        assert_eq!(canvas.get_pixel(3, 3).0, [114; 3]);
    }

    #[test]
    fn yolox_s_letterbox_keeps_the_top_left_corner_and_rounds_down() {
        // 300x200 on 416x416: r = 416 / 300, 277.33 rows rounded down to 277, no offset.
        let placed = Letterbox::fit(300, 200, 416, 416, Anchor::TopLeft);
        assert_eq!(
            placed,
            Letterbox {
                width: 416,
                height: 277,
                left: 0,
                top: 0
            }
        );
        let src = image::RgbImage::from_pixel(4, 2, image::Rgb([200, 10, 10]));
        let (canvas, g) = letterbox(&src, (4, 4), Anchor::TopLeft, 114, Filter::Nearest);
        assert_eq!(canvas.get_pixel(0, 0).0, [200, 10, 10]);
        assert_eq!(canvas.get_pixel(3, 1).0, [200, 10, 10]);
        assert_eq!(canvas.get_pixel(0, 2).0, [114; 3]);
        assert_eq!(g.box_to_original([1.0, 0.0, 3.0, 2.0], 4, 4), [1.0, 0.0, 3.0, 2.0]);
    }
}
