//! The tabular explanation as a picture: horizontal bars of the largest attributions, the view
//! SHAP's bar and waterfall plots made familiar (positive red, negative blue, labelled with the
//! feature's name and input value).

use std::sync::Once;

use image::RgbImage;
use plotters::prelude::*;
use plotters::style::{FontStyle, RGBColor};

const POSITIVE: RGBColor = RGBColor(255, 0, 81);
const NEGATIVE: RGBColor = RGBColor(0, 139, 251);
const WIDTH: u32 = 720;
const ROW: u32 = 26;
const LABELS: i32 = 300;

/// One bar: the feature's name, its input value and its attribution.
pub struct Bar {
    pub name: String,
    pub value: f32,
    pub attribution: f32,
}

pub(super) fn fonts() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // DejaVu Sans, embedded: the service draws the same text on any machine, fonts or none.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());
    });
}

/// Bars for the `top` largest |attributions| (`bars` sorted by magnitude), under `title`.
pub fn bar_chart(title: &str, bars: &[Bar], top: usize) -> RgbImage {
    fonts();
    let shown = &bars[..bars.len().min(top)];
    let height = ROW * (shown.len() as u32 + 2) + 10;
    let mut buf = vec![255u8; (WIDTH * height * 3) as usize];
    draw(&mut buf, height, title, shown, bars.len() - shown.len());
    RgbImage::from_raw(WIDTH, height, buf).unwrap_or_else(|| RgbImage::new(1, 1))
}

fn draw(buf: &mut [u8], height: u32, title: &str, bars: &[Bar], hidden: usize) {
    let area = BitMapBackend::with_buffer(buf, (WIDTH, height)).into_drawing_area();
    let text = |size: f64| ("sans-serif", size).into_font().color(&BLACK);
    let scale = bars
        .iter()
        .map(|b| b.attribution.abs())
        .fold(0.0f32, f32::max)
        .max(f32::MIN_POSITIVE);
    // Bars grow left (negative) or right (positive) from an axis in the middle of their column.
    let (left, right) = (LABELS + 10, WIDTH as i32 - 10);
    let axis = (left + right) / 2;
    let half = ((right - left) / 2 - 70) as f32;
    let _ = area.draw(&Text::new(title.to_string(), (10, 6), text(16.0)));
    for (i, b) in bars.iter().enumerate() {
        let y = (ROW * (i as u32 + 1)) as i32 + 6;
        let label = format!("{} = {}", b.name, short(b.value));
        let _ = area.draw(&Text::new(label, (10, y + 5), text(13.0)));
        let len = (b.attribution.abs() / scale * half).round() as i32;
        let (x0, x1, color) = if b.attribution >= 0.0 {
            (axis, axis + len, POSITIVE)
        } else {
            (axis - len, axis, NEGATIVE)
        };
        let _ = area.draw(&Rectangle::new(
            [(x0, y + 3), (x1.max(x0 + 1), y + ROW as i32 - 5)],
            color.filled(),
        ));
        let number = format!("{:+.4}", b.attribution);
        let at = if b.attribution >= 0.0 { x1 + 4 } else { x0 - 64 };
        let _ = area.draw(&Text::new(number, (at, y + 5), text(12.0)));
    }
    let bottom = (ROW * (bars.len() as u32 + 1)) as i32 + 6;
    let _ = area.draw(&PathElement::new(vec![(axis, ROW as i32), (axis, bottom)], BLACK));
    if hidden > 0 {
        let _ = area.draw(&Text::new(
            format!("{hidden} more features"),
            (10, bottom + 5),
            text(12.0),
        ));
    }
    let _ = area.present();
}

/// `panel` scaled up to at least `min_width` pixels wide (nearest neighbour: small model inputs stay
/// crisp), with `lines` of text under it: a panel of a side-by-side comparison.
pub fn captioned(panel: &RgbImage, lines: &[String], min_width: u32) -> RgbImage {
    fonts();
    let factor = min_width.div_ceil(panel.width().max(1)).max(1);
    let scaled = image::imageops::resize(
        panel,
        panel.width() * factor,
        panel.height() * factor,
        image::imageops::FilterType::Nearest,
    );
    let (width, caption) = (scaled.width().max(min_width), 18 * lines.len() as u32 + 8);
    let height = scaled.height() + caption;
    let mut buf = vec![255u8; (width * height * 3) as usize];
    {
        let area = BitMapBackend::with_buffer(&mut buf, (width, height)).into_drawing_area();
        let text = ("sans-serif", 13.0).into_font().color(&BLACK);
        for (i, line) in lines.iter().enumerate() {
            let y = (scaled.height() + 4 + 18 * i as u32) as i32;
            let _ = area.draw(&Text::new(line.clone(), (4, y), text.clone()));
        }
        let _ = area.present();
    }
    let mut out = RgbImage::from_raw(width, height, buf).unwrap_or_else(|| RgbImage::new(1, 1));
    image::imageops::replace(&mut out, &scaled, 0, 0);
    out
}

/// A number in at most about 8 characters.
fn short(v: f32) -> String {
    if v != 0.0 && (v.abs() >= 1e5 || v.abs() < 1e-3) {
        format!("{v:.2e}")
    } else {
        let s = format!("{v:.4}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_are_drawn_in_their_colours_on_their_side() {
        let bars = vec![
            Bar {
                name: "a".into(),
                value: 1.0,
                attribution: 2.0,
            },
            Bar {
                name: "b".into(),
                value: 0.5,
                attribution: -1.0,
            },
            Bar {
                name: "c".into(),
                value: 0.0,
                attribution: 0.1,
            },
        ];
        let img = bar_chart("class x", &bars, 2);
        assert_eq!(img.width(), WIDTH);
        let axis = ((LABELS + 10) + (WIDTH as i32 - 10)) / 2;
        let row_mid = |i: u32| ROW * (i + 1) + 6 + ROW / 2;
        assert_eq!(
            img.get_pixel(axis as u32 + 20, row_mid(0)).0,
            [255, 0, 81],
            "positive bar right, red"
        );
        assert_eq!(
            img.get_pixel(axis as u32 - 20, row_mid(1)).0,
            [0, 139, 251],
            "negative bar left, blue"
        );
        assert_eq!(img.get_pixel(axis as u32 - 20, row_mid(0)).0, [255, 255, 255]);
        // Text was drawn: dark pixels in the label column.
        let dark = (0..LABELS as u32)
            .flat_map(|x| (0..img.height()).map(move |y| (x, y)))
            .filter(|(x, y)| img.get_pixel(*x, *y).0[0] < 100)
            .count();
        assert!(dark > 50, "labels drawn: {dark} dark pixels");
        assert_eq!(short(0.5), "0.5");
        assert_eq!(short(1234.5), "1234.5");
    }
}
