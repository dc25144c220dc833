//! Detection boxes drawn over an explanation's panel: the explained detection's box outlined
//! strongly, the input's other detections faintly, so the map reads against what the detector saw.

use image::{Rgb, RgbImage};

/// How a box is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BoxStyle {
    /// The explained detection: an opaque outline, two pixels wide, with a dark edge inside.
    Target,
    /// Another detection: a one-pixel outline blended at a quarter.
    Faint,
}

/// Outlines `b` (`[x0, y0, x1, y1]` in the panel's pixels) on `img`.
pub fn outline_box(img: &mut RgbImage, b: [f32; 4], style: BoxStyle) {
    let (w, h) = img.dimensions();
    if w == 0 || h == 0 || !b.iter().all(|v| v.is_finite()) {
        return;
    }
    let clamp = |v: f32, max: u32| (v.round().max(0.0) as u32).min(max - 1);
    let (x0, y0, x1, y1) = (clamp(b[0], w), clamp(b[1], h), clamp(b[2], w), clamp(b[3], h));
    let (colour, alpha, width) = match style {
        BoxStyle::Target => (Rgb([0, 255, 64]), 1.0f32, 2),
        BoxStyle::Faint => (Rgb([255, 255, 255]), 0.25f32, 1),
    };
    let mut put = |x: u32, y: u32, c: Rgb<u8>, a: f32| {
        if x < w && y < h {
            let p = img.get_pixel_mut(x, y);
            for k in 0..3 {
                p.0[k] = (a * f32::from(c.0[k]) + (1.0 - a) * f32::from(p.0[k])).round() as u8;
            }
        }
    };
    for inset in 0..width {
        let (l, t) = (x0 + inset, y0 + inset);
        let (r, bo) = (x1.saturating_sub(inset), y1.saturating_sub(inset));
        if l > r || t > bo {
            break;
        }
        for x in l..=r {
            put(x, t, colour, alpha);
            put(x, bo, colour, alpha);
        }
        for y in t..=bo {
            put(l, y, colour, alpha);
            put(r, y, colour, alpha);
        }
    }
    if style == BoxStyle::Target {
        // A dark line inside the outline keeps it visible over a light map.
        let (l, t, r, bo) = (x0 + 2, y0 + 2, x1.saturating_sub(2), y1.saturating_sub(2));
        if l <= r && t <= bo {
            for x in l..=r {
                put(x, t, Rgb([0, 0, 0]), 0.6);
                put(x, bo, Rgb([0, 0, 0]), 0.6);
            }
            for y in t..=bo {
                put(l, y, Rgb([0, 0, 0]), 0.6);
                put(r, y, Rgb([0, 0, 0]), 0.6);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_target_box_is_outlined_and_others_faint() {
        let mut img = RgbImage::from_pixel(20, 20, Rgb([0, 0, 0]));
        outline_box(&mut img, [2.0, 2.0, 10.0, 10.0], BoxStyle::Target);
        outline_box(&mut img, [12.0, 12.0, 18.0, 18.0], BoxStyle::Faint);
        assert_eq!(img.get_pixel(2, 5).0, [0, 255, 64]);
        assert_eq!(img.get_pixel(6, 6).0, [0, 0, 0], "the inside is left as it was");
        assert_eq!(img.get_pixel(12, 15).0, [64, 64, 64]);
    }
}
