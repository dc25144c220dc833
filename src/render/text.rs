//! A text explanation as people read one: the original text with each word highlighted in a
//! diverging colour (red for evidence for the target, blue against, stronger for larger values,
//! as Captum's and transformers-interpret's text views draw it), as an HTML fragment to embed or
//! as a PNG of the wrapped text.

use image::RgbImage;
use plotters::prelude::*;
use plotters::style::RGBColor;

/// A piece of the original text: a word with its value, or the text between words.
#[derive(Debug, Clone, PartialEq)]
pub struct Highlight {
    /// The text as written.
    pub text: String,
    /// The word's attribution; `None` for the text between words.
    pub value: Option<f32>,
}

const POSITIVE: (u8, u8, u8) = (255, 0, 81);
const NEGATIVE: (u8, u8, u8) = (0, 139, 251);
const WIDTH: u32 = 720;
const LINE: u32 = 24;
const MARGIN: i32 = 10;

/// The colour of `value` on a scale whose strongest value is `peak`, and its strength (0 to 1).
fn shade(value: f32, peak: f32) -> ((u8, u8, u8), f32) {
    let strength = if peak > 0.0 && value.is_finite() {
        (value.abs() / peak).min(1.0)
    } else {
        0.0
    };
    (if value >= 0.0 { POSITIVE } else { NEGATIVE }, strength)
}

fn peak(pieces: &[Highlight]) -> f32 {
    pieces
        .iter()
        .filter_map(|p| p.value)
        .filter(|v| v.is_finite())
        .fold(0f32, |m, v| m.max(v.abs()))
}

/// The HTML fragment: `<section class="explaind-text">` with the target, then the text, each word
/// in a `<mark>` whose background shows its value (the value also in `title` and `data-value`).
/// Every text is escaped.
pub fn text_html(target: &str, score: f64, pieces: &[Highlight]) -> String {
    let escape = |s: &str| html_escape::encode_text(s).into_owned();
    let top = peak(pieces);
    let mut html = format!(
        "<section class=\"explaind-text\">\n<h3>{} ({score:.3})</h3>\n<p>",
        escape(target)
    );
    for p in pieces {
        match p.value {
            None => html.push_str(&escape(&p.text)),
            Some(v) => {
                let ((r, g, b), a) = shade(v, top);
                html.push_str(&format!(
                    "<mark style=\"background: rgba({r}, {g}, {b}, {a:.3})\" title=\"{v:.4}\" data-value=\"{v}\">{}</mark>",
                    escape(&p.text)
                ));
            }
        }
    }
    html.push_str("</p>\n</section>\n");
    html
}

/// The PNG panel: the target, then the text wrapped to the panel's width, each word on a
/// background of its colour blended with white by its strength.
pub fn text_png(target: &str, score: f64, pieces: &[Highlight]) -> RgbImage {
    super::bars::fonts();
    let font = ("sans-serif", 15.0).into_font();
    let width_of = |s: &str| {
        font.box_size(s)
            .map(|(w, _)| w as i32)
            .unwrap_or(8 * s.chars().count() as i32)
    };
    // Lay the words out first: (x, line, text, value).
    let mut placed: Vec<(i32, u32, String, Option<f32>)> = Vec::new();
    let (mut x, mut line) = (MARGIN, 1u32);
    let right = WIDTH as i32 - MARGIN;
    for p in pieces {
        for part in split_keeping_spaces(&p.text, p.value.is_none()) {
            if part == "\n" {
                (x, line) = (MARGIN, line + 1);
                continue;
            }
            let w = width_of(&part);
            if x + w > right && x > MARGIN {
                (x, line) = (MARGIN, line + 1);
                if part.trim().is_empty() {
                    continue;
                }
            }
            placed.push((x, line, part, p.value));
            x += w;
        }
    }
    let height = LINE * (line + 1) + 4;
    let mut buf = vec![255u8; (WIDTH * height * 3) as usize];
    {
        let area = BitMapBackend::with_buffer(&mut buf, (WIDTH, height)).into_drawing_area();
        let top = peak(pieces);
        let title = format!("{target} ({score:.3})");
        let _ = area.draw(&Text::new(title, (MARGIN, 6), font.clone().color(&BLACK)));
        for (x, line, text, value) in &placed {
            let y = (LINE * line) as i32 + 4;
            if let Some(v) = value {
                let ((r, g, b), a) = shade(*v, top);
                let blend = |c: u8| (255.0 - (255.0 - c as f32) * a) as u8;
                let colour = RGBColor(blend(r), blend(g), blend(b));
                let w = width_of(text);
                let _ = area.draw(&Rectangle::new(
                    [(*x, y - 2), (*x + w, y + LINE as i32 - 6)],
                    colour.filled(),
                ));
            }
            let _ = area.draw(&Text::new(text.clone(), (*x, y), font.clone().color(&BLACK)));
        }
        let _ = area.present();
    }
    RgbImage::from_raw(WIDTH, height, buf).unwrap_or_else(|| RgbImage::new(1, 1))
}

/// A word stays whole; the text between words is split at spaces and line breaks, so lines wrap
/// there.
fn split_keeping_spaces(text: &str, between: bool) -> Vec<String> {
    if !between {
        return vec![text.to_string()];
    }
    let mut out = Vec::new();
    let mut current = String::new();
    for c in text.chars() {
        if c == '\n' {
            if !current.is_empty() {
                out.push(std::mem::take(&mut current));
            }
            out.push("\n".into());
        } else if c.is_whitespace() {
            current.push(' ');
            out.push(std::mem::take(&mut current));
        } else {
            current.push(c);
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces() -> Vec<Highlight> {
        vec![
            Highlight {
                text: "<great>".into(),
                value: Some(2.0),
            },
            Highlight {
                text: " & ".into(),
                value: None,
            },
            Highlight {
                text: "bad".into(),
                value: Some(-1.0),
            },
        ]
    }

    #[test]
    fn html_marks_each_word_in_its_colour_and_escapes_the_text() {
        let html = text_html("pos<itive>", 0.9, &pieces());
        assert!(html.contains("<h3>pos&lt;itive&gt; (0.900)</h3>"), "{html}");
        assert!(
            html.contains("rgba(255, 0, 81, 1.000)\" title=\"2.0000\" data-value=\"2\">&lt;great&gt;</mark>"),
            "{html}"
        );
        assert!(
            html.contains(" &amp; <mark style=\"background: rgba(0, 139, 251, 0.500)\""),
            "{html}"
        );
    }

    #[test]
    fn png_wraps_long_text_and_colours_words() {
        let one = text_png("positive", 0.9, &pieces());
        let long: Vec<Highlight> = (0..200)
            .flat_map(|i| {
                [
                    Highlight {
                        text: format!("word{i}"),
                        value: Some(i as f32),
                    },
                    Highlight {
                        text: " ".into(),
                        value: None,
                    },
                ]
            })
            .collect();
        let many = text_png("positive", 0.9, &long);
        assert_eq!(one.width(), WIDTH);
        assert!(
            many.height() > 10 * one.height() / 2,
            "wrapped onto many lines: {}",
            many.height()
        );
        // The strongest word's background is the positive colour itself.
        let red = one.pixels().filter(|p| p.0 == [255, 0, 81]).count();
        assert!(red > 50, "{red} pixels of the positive colour");
    }
}
