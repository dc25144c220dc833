//! Concept and layer charts: TCAV scores per layer as bars (the random CAVs' mean beside each, a
//! star on the insignificant ones, as tensorflow/tcav's plot marks them), and a layer-information
//! curve over the layers with the label's entropy as its ceiling.

use image::RgbImage;
use plotters::prelude::*;
use plotters::style::RGBColor;

const WIDTH: u32 = 720;
const HEIGHT: u32 = 360;
const CONCEPT: RGBColor = RGBColor(255, 0, 81);
const RANDOM: RGBColor = RGBColor(160, 160, 160);
const SHUFFLED: RGBColor = RGBColor(0, 139, 251);
const REDUNDANT: RGBColor = RGBColor(0, 160, 90);

/// One layer's bar.
pub struct LayerBar {
    /// The layer.
    pub layer: String,
    /// Mean TCAV score of the concept.
    pub score: f64,
    /// Its standard deviation.
    pub std: f64,
    /// Mean score of random CAVs.
    pub random: f64,
    /// Whether the difference is significant.
    pub significant: bool,
}

/// One layer's point.
pub struct LayerPoint {
    /// The layer.
    pub layer: String,
    /// Mutual information with the labels (nats).
    pub information: f64,
    /// The same with shuffled labels.
    pub shuffled: f64,
    /// Co-information with the next layer.
    pub redundancy: Option<f64>,
}

/// The plot area: left, top, right, bottom.
const AREA: (i32, i32, i32, i32) = (60, 40, WIDTH as i32 - 20, HEIGHT as i32 - 60);

fn canvas(draw: impl FnOnce(&DrawingArea<BitMapBackend, plotters::coord::Shift>)) -> RgbImage {
    super::bars::fonts();
    let mut buf = vec![255u8; (WIDTH * HEIGHT * 3) as usize];
    {
        let area = BitMapBackend::with_buffer(&mut buf, (WIDTH, HEIGHT)).into_drawing_area();
        draw(&area);
        let _ = area.present();
    }
    RgbImage::from_raw(WIDTH, HEIGHT, buf).unwrap_or_else(|| RgbImage::new(1, 1))
}

fn text(size: f64) -> TextStyle<'static> {
    ("sans-serif", size).into_font().color(&BLACK)
}

/// Axes with ticks from 0 to `top` on the left; `y(v)` maps a value to a pixel row.
fn axes(area: &DrawingArea<BitMapBackend, plotters::coord::Shift>, title: &str, top: f64) -> impl Fn(f64) -> i32 {
    let (l, t, r, b) = AREA;
    let _ = area.draw(&Text::new(title.to_string(), (10, 8), text(15.0)));
    let _ = area.draw(&PathElement::new(vec![(l, t), (l, b), (r, b)], BLACK));
    let y = move |v: f64| b - ((v / top).clamp(0.0, 1.05) * (b - t) as f64).round() as i32;
    for i in 0..=4 {
        let v = top * i as f64 / 4.0;
        let _ = area.draw(&PathElement::new(vec![(l - 4, y(v)), (l, y(v))], BLACK));
        let _ = area.draw(&Text::new(format!("{v:.2}"), (8, y(v) - 6), text(11.0)));
    }
    y
}

/// Layer names under their slots, shortened to fit.
fn layer_names<'a>(
    area: &DrawingArea<BitMapBackend, plotters::coord::Shift>,
    names: impl Iterator<Item = (i32, &'a str)>,
) {
    for (x, name) in names {
        let short: String = match name.chars().count() > 16 {
            true => format!(
                "...{}",
                name.chars()
                    .rev()
                    .take(13)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<String>()
            ),
            false => name.to_string(),
        };
        let _ = area.draw(&Text::new(short, (x - 40, AREA.3 + 8), text(11.0)));
    }
}

/// TCAV scores per layer: the concept's bar (its standard deviation as a whisker) and the random
/// CAVs' beside it; `*` marks a layer whose difference is not significant.
pub fn tcav_chart(title: &str, bars: &[LayerBar]) -> RgbImage {
    canvas(|area| {
        let y = axes(area, title, 1.0);
        let (l, _, r, b) = AREA;
        let slot = (r - l) / bars.len().max(1) as i32;
        let half = (slot / 4).clamp(4, 40);
        for (i, bar) in bars.iter().enumerate() {
            let x = l + slot * i as i32 + slot / 2;
            let _ = area.draw(&Rectangle::new([(x - half, y(bar.score)), (x, b)], CONCEPT.filled()));
            let _ = area.draw(&Rectangle::new([(x, y(bar.random)), (x + half, b)], RANDOM.filled()));
            let whisker = (y(bar.score + bar.std), y((bar.score - bar.std).max(0.0)));
            let _ = area.draw(&PathElement::new(
                vec![(x - half / 2, whisker.0), (x - half / 2, whisker.1)],
                BLACK,
            ));
            if !bar.significant {
                let _ = area.draw(&Text::new("*", (x - half / 2 - 3, y(bar.score) - 18), text(18.0)));
            }
        }
        layer_names(
            area,
            bars.iter()
                .enumerate()
                .map(|(i, b)| (l + slot * i as i32 + slot / 2, b.layer.as_str())),
        );
        let legend = [(CONCEPT, "concept"), (RANDOM, "random CAVs")];
        for (k, (color, name)) in legend.iter().enumerate() {
            let x = r - 240 + 120 * k as i32;
            let _ = area.draw(&Rectangle::new([(x, 12), (x + 12, 24)], color.filled()));
            let _ = area.draw(&Text::new(name.to_string(), (x + 16, 11), text(12.0)));
        }
        let _ = area.draw(&Text::new(
            "* not significant (two-sided t-test, p >= 0.05)".to_string(),
            (l, HEIGHT as i32 - 22),
            text(11.0),
        ));
    })
}

/// Mutual information per layer (and with shuffled labels, and the co-information of neighbouring
/// layers), the labels' entropy dashed above.
pub fn information_chart(title: &str, points: &[LayerPoint], entropy: f64) -> RgbImage {
    canvas(|area| {
        let top = points
            .iter()
            .map(|p| p.information.max(p.redundancy.unwrap_or(0.0)))
            .fold(entropy, f64::max)
            .max(1e-6)
            * 1.1;
        let y = axes(area, title, top);
        let (l, _, r, _) = AREA;
        let slot = (r - l) / points.len().max(1) as i32;
        let x = |i: usize| l + slot * i as i32 + slot / 2;
        let mut dash = l;
        while dash < r {
            let _ = area.draw(&PathElement::new(
                vec![(dash, y(entropy)), ((dash + 6).min(r), y(entropy))],
                BLACK,
            ));
            dash += 12;
        }
        let _ = area.draw(&Text::new(
            "H(label)".to_string(),
            (r - 60, y(entropy) - 16),
            text(11.0),
        ));
        let series: [(RGBColor, Vec<(i32, i32)>); 3] = [
            (
                CONCEPT,
                points
                    .iter()
                    .enumerate()
                    .map(|(i, p)| (x(i), y(p.information)))
                    .collect(),
            ),
            (
                SHUFFLED,
                points.iter().enumerate().map(|(i, p)| (x(i), y(p.shuffled))).collect(),
            ),
            (
                REDUNDANT,
                points
                    .iter()
                    .enumerate()
                    .filter_map(|(i, p)| p.redundancy.map(|v| (x(i) + slot / 2, y(v.max(0.0)))))
                    .collect(),
            ),
        ];
        for (color, line) in &series {
            let _ = area.draw(&PathElement::new(line.clone(), color.stroke_width(2)));
            for &(px, py) in line {
                let _ = area.draw(&Circle::new((px, py), 3, color.filled()));
            }
        }
        layer_names(area, points.iter().enumerate().map(|(i, p)| (x(i), p.layer.as_str())));
        let legend = [
            (CONCEPT, "I(layer; label)"),
            (SHUFFLED, "shuffled labels"),
            (REDUNDANT, "shared with next layer"),
        ];
        for (k, (color, name)) in legend.iter().enumerate() {
            let lx = l + 10 + 180 * k as i32;
            let _ = area.draw(&Rectangle::new(
                [(lx, HEIGHT as i32 - 24), (lx + 12, HEIGHT as i32 - 12)],
                color.filled(),
            ));
            let _ = area.draw(&Text::new(name.to_string(), (lx + 16, HEIGHT as i32 - 25), text(12.0)));
        }
    })
}
