//! Rendering attributions: colormaps, heat maps blended over the input image, bar charts of
//! tabular attributions, PNG encoding.
//! Rendering never recomputes an attribution; it only draws one.

mod answer;
mod bars;
mod boxes;
pub mod concepts;
mod report;
mod text;

pub use answer::{
    decision_html, decision_lines, feature_chart, map_on_image, outline_region, panels_png, text_panel, MapOnImage,
};
pub use bars::{bar_chart, captioned, Bar};
pub use boxes::{outline_box, BoxStyle};
pub use report::{report_html, short, Factor, Figure, Report};
pub use text::{text_html, text_png, Highlight};

use colorgrad::Gradient;
use image::{ImageBuffer, Rgb, RgbImage};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Colour maps for heat maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Colormap {
    /// Blue-cyan-yellow-red (the classic CAM look).
    Jet,
    /// Google's improved rainbow.
    Turbo,
    /// Perceptually uniform, black to yellow.
    Inferno,
    /// Perceptually uniform, purple to yellow.
    Viridis,
    /// Diverging blue (negative) / white / red (positive), as SHAP plots use.
    Diverging,
}

/// Which signs of the attribution to draw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Polarity {
    /// Positive attributions (evidence for the target).
    Positive,
    /// Negative attributions (evidence against), drawn by magnitude.
    Negative,
    /// Both, with a diverging colour map.
    Both,
}

/// What lies under the heat map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Background {
    /// The input image.
    Original,
    /// The input image in grey, so the colours stand out.
    Grayscale,
    /// No image: the bare heat map.
    None,
}

/// How a heat map is drawn.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RenderOptions {
    /// Colour map; default `jet`, or `diverging` with polarity `both`.
    pub colormap: Option<Colormap>,
    /// Signs drawn.
    #[schema(default = "positive")]
    pub polarity: Polarity,
    /// Percentiles of the drawn values mapped to the bottom and top of the colour range (Vertex
    /// AI's defaults); values below the lower one are left transparent.
    #[schema(default = json!([62.0, 99.9]))]
    pub clip_percentiles: [f32; 2],
    /// Opacity of the heat map over the image.
    #[schema(default = 0.5, minimum = 0.0, maximum = 1.0)]
    pub alpha: f32,
    /// What is under the heat map.
    #[schema(default = "original")]
    pub overlay: Background,
}

impl Default for RenderOptions {
    fn default() -> Self {
        Self {
            colormap: None,
            polarity: Polarity::Positive,
            clip_percentiles: [62.0, 99.9],
            alpha: 0.5,
            overlay: Background::Original,
        }
    }
}

impl RenderOptions {
    /// Checks the ranges.
    pub fn validate(&self) -> Result<(), String> {
        let [lo, hi] = self.clip_percentiles;
        if !(0.0..=100.0).contains(&lo) || !(0.0..=100.0).contains(&hi) || lo >= hi {
            return Err("clip_percentiles must be two percentiles, 0 <= low < high <= 100".into());
        }
        if !(0.0..=1.0).contains(&self.alpha) {
            return Err("alpha must be between 0 and 1".into());
        }
        Ok(())
    }
}

fn gradient(map: Colormap) -> Box<dyn Gradient> {
    match map {
        Colormap::Turbo => Box::new(colorgrad::preset::turbo()),
        Colormap::Inferno => Box::new(colorgrad::preset::inferno()),
        Colormap::Viridis => Box::new(colorgrad::preset::viridis()),
        Colormap::Diverging => Box::new(colorgrad::preset::rd_bu()),
        // Jet's anchor colours at their standard positions.
        Colormap::Jet => match colorgrad::GradientBuilder::new()
            .html_colors(&["#00007f", "#0000ff", "#00ffff", "#ffff00", "#ff0000", "#7f0000"])
            .domain(&[0.0, 0.125, 0.375, 0.625, 0.875, 1.0])
            .build::<colorgrad::LinearGradient>()
        {
            Ok(g) => Box::new(g),
            Err(_) => Box::new(colorgrad::preset::turbo()),
        },
    }
}

/// The `q`-th percentile (0-100) of `values` (nearest rank on a sorted copy).
pub fn percentile(values: &[f32], q: f32) -> f32 {
    let mut sorted: Vec<f32> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return 0.0;
    }
    sorted.sort_by(f32::total_cmp);
    let rank = ((q / 100.0) * (sorted.len() - 1) as f32).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Draws `map` (`width x height`, the image's size) over `image`.
pub fn overlay(image: &RgbImage, map: &[f32], options: &RenderOptions) -> RgbImage {
    let (w, h) = image.dimensions();
    let polarity = options.polarity;
    let colormap = options.colormap.unwrap_or(if polarity == Polarity::Both {
        Colormap::Diverging
    } else {
        Colormap::Jet
    });
    let grad = gradient(colormap);
    // Normalised intensity per pixel: [0, 1] for one sign, [-1, 1] for both.
    let drawn: Vec<f32> = map
        .iter()
        .map(|v| match polarity {
            Polarity::Positive => v.max(0.0),
            Polarity::Negative => (-v).max(0.0),
            Polarity::Both => *v,
        })
        .collect();
    let magnitudes: Vec<f32> = drawn.iter().map(|v| v.abs()).filter(|v| *v > 0.0).collect();
    let lo = percentile(&magnitudes, options.clip_percentiles[0]);
    let hi = percentile(&magnitudes, options.clip_percentiles[1]).max(lo + f32::EPSILON);
    let bare = options.overlay == Background::None;
    ImageBuffer::from_fn(w, h, |x, y| {
        let i = (y * w + x) as usize;
        let v = drawn.get(i).copied().unwrap_or(0.0);
        let t = ((v.abs() - lo) / (hi - lo)).clamp(0.0, 1.0);
        let position = match polarity {
            // rd_bu runs red to blue: positive attributions are drawn red.
            Polarity::Both => 0.5 - 0.5 * t * v.signum(),
            _ => t,
        };
        let [r, g, b, _] = grad
            .at(if colormap == Colormap::Diverging && polarity != Polarity::Both {
                0.5 - 0.5 * t
            } else {
                position
            })
            .to_rgba8();
        if bare {
            return Rgb([r, g, b]);
        }
        let base = image.get_pixel(x, y).0;
        let base = match options.overlay {
            Background::Grayscale => {
                let l = (0.299 * base[0] as f32 + 0.587 * base[1] as f32 + 0.114 * base[2] as f32) as u8;
                [l, l, l]
            }
            _ => base,
        };
        // Below the lower clip the image shows through; above, the heat fades in.
        let a = if v.abs() <= lo {
            0.0
        } else {
            options.alpha * (2.0 * t).clamp(0.15, 1.0)
        };
        let mix = |c: u8, o: u8| (c as f32 * a + o as f32 * (1.0 - a)).round() as u8;
        Rgb([mix(r, base[0]), mix(g, base[1]), mix(b, base[2])])
    })
}

/// Places images side by side.
pub fn side_by_side(images: &[RgbImage]) -> RgbImage {
    let width: u32 = images.iter().map(|i| i.width()).sum();
    let height = images.iter().map(|i| i.height()).max().unwrap_or(0);
    let mut out = RgbImage::new(width, height);
    let mut x = 0;
    for img in images {
        image::imageops::replace(&mut out, img, x as i64, 0);
        x += img.width();
    }
    out
}

/// PNG bytes of an image.
pub fn png(image: &RgbImage) -> Vec<u8> {
    let mut bytes = Vec::new();
    // Encoding an in-memory RGB buffer to PNG does not fail.
    let _ = image.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png);
    bytes
}

/// An image as JPEG (quality 90), for protocols that carry pictures as JPEG (Vertex AI's
/// `b64_jpeg`).
pub fn jpeg(image: &RgbImage) -> Vec<u8> {
    let mut bytes = Vec::new();
    // Encoding an in-memory RGB buffer to JPEG does not fail.
    let _ = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 90).encode_image(image);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hot_region_is_coloured_and_the_rest_shows_through() {
        let img = RgbImage::from_pixel(10, 10, Rgb([100, 100, 100]));
        let mut map = vec![0f32; 100];
        for y in 0..3 {
            for x in 0..3 {
                map[y * 10 + x] = 1.0 + (x + y) as f32;
            }
        }
        let out = overlay(&img, &map, &RenderOptions::default());
        assert_eq!(out.get_pixel(9, 9).0, [100, 100, 100], "cold pixels keep the image");
        assert_ne!(out.get_pixel(2, 2).0, [100, 100, 100], "hot pixels are coloured");
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0, 5.0], 50.0), 3.0);
    }
}
