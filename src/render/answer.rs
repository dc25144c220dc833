//! Drawing an explanation's answer: a map over the model's input drawn back onto the original image
//! (its values on the original's grid and, when asked, the heat-map panel), a tabular
//! explanation's bar chart, and the panels of several targets side by side as one PNG.

use image::RgbImage;

use super::{bar_chart, overlay, png, side_by_side, Bar, RenderOptions};
use crate::runtime::preprocess::Geometry;

/// Bars drawn in a tabular explanation's chart.
const CHART_BARS: usize = 12;

/// A map drawn back onto the original image.
pub struct MapOnImage {
    /// Width of the grid `values` lie on (the original's, scaled down to `max_pixels`).
    pub width: u32,
    /// Its height.
    pub height: u32,
    /// The map's values on that grid, row-major.
    pub values: Vec<f32>,
    /// The heat map over the original image, when a panel was asked.
    pub panel: Option<RgbImage>,
}

/// Maps `map` (`width x height`, over the model's input) back onto `original` through the
/// preprocessing `geometry`, at most `max_pixels` large; draws the panel when `panel` is given.
pub fn map_on_image(
    map: &[f32],
    (width, height): (usize, usize),
    geometry: &Geometry,
    original: &RgbImage,
    panel: Option<&RenderOptions>,
    max_pixels: u64,
) -> MapOnImage {
    let (ow, oh, values) = geometry.map_back(map, width, height, max_pixels);
    let panel = panel.map(|options| {
        let background = if (ow, oh) == original.dimensions() {
            original.clone()
        } else {
            image::imageops::resize(original, ow, oh, image::imageops::FilterType::Triangle)
        };
        overlay(&background, &values, options)
    });
    MapOnImage {
        width: ow,
        height: oh,
        values,
        panel,
    }
}

/// A tabular explanation's panel: the largest attributions (`bars`, sorted by magnitude) as a bar
/// chart titled with the target and its score.
pub fn feature_chart(target: &str, score: f64, bars: &[Bar]) -> RgbImage {
    bar_chart(&format!("{target} ({score:.4})"), bars, CHART_BARS)
}

/// One PNG of every target's panel, side by side.
pub fn panels_png(panels: &[RgbImage]) -> Vec<u8> {
    png(&side_by_side(panels))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_map_over_a_centre_crop_lands_inside_the_crop_on_the_original() {
        // A 20x10 original whose centre 10x10 was resized to a 5x5 model input.
        let geometry = Geometry {
            original_width: 20,
            original_height: 10,
            crop_x: 5.0,
            crop_y: 0.0,
            crop_width: 10.0,
            crop_height: 10.0,
        };
        let original = RgbImage::from_pixel(20, 10, image::Rgb([90, 90, 90]));
        let map = vec![1.0f32; 25];
        let drawn = map_on_image(
            &map,
            (5, 5),
            &geometry,
            &original,
            Some(&RenderOptions::default()),
            u64::MAX,
        );
        assert_eq!((drawn.width, drawn.height), (20, 10));
        let at = |x: usize, y: usize| drawn.values[y * 20 + x];
        assert_eq!(at(0, 5), 0.0, "outside the crop nothing was seen");
        assert!(at(10, 5) > 0.9, "inside the crop the map is kept");
        assert_eq!(drawn.panel.map(|p| p.dimensions()), Some((20, 10)));
        let small = map_on_image(&map, (5, 5), &geometry, &original, None, 50);
        assert!(small.width * small.height <= 50 && small.panel.is_none());
    }
}
