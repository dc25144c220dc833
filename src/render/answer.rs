//! Drawing an explanation's answer: a map over the model's input drawn back onto the original image
//! (its values on the original's grid and, when asked, the heat-map panel), a tabular
//! explanation's bar chart or its decision's rule and counterfactuals as text, and the panels of
//! several targets side by side as one PNG.

use image::RgbImage;

use super::{bar_chart, overlay, png, side_by_side, Bar, RenderOptions};
use crate::pixels::Geometry;

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
            let whole = (0, 0, original.width(), original.height());
            crate::pixels::resample::rgb(original, whole, ow, oh, crate::pixels::resample::Filter::Bilinear)
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

/// Draws the outline of a region (`inside`, `width x height` over the model's input) on `panel`,
/// a heat map drawn by [`map_on_image`] with the same `geometry` and `max_pixels`: white pixels
/// along its inner edge, so the map under the region stays visible.
pub fn outline_region(
    panel: &mut RgbImage,
    inside: &[bool],
    (width, height): (usize, usize),
    geometry: &Geometry,
    max_pixels: u64,
) {
    let map: Vec<f32> = inside.iter().map(|v| if *v { 1.0 } else { 0.0 }).collect();
    let (ow, oh, values) = geometry.map_back(&map, width, height, max_pixels);
    if (ow, oh) != panel.dimensions() {
        return;
    }
    let (w, h) = (ow as usize, oh as usize);
    let at = |x: usize, y: usize| values.get(y * w + x).is_some_and(|v| *v >= 0.5);
    for y in 0..h {
        for x in 0..w {
            let edge = at(x, y)
                && (x == 0
                    || y == 0
                    || x + 1 == w
                    || y + 1 == h
                    || !at(x - 1, y)
                    || !at(x + 1, y)
                    || !at(x, y - 1)
                    || !at(x, y + 1));
            if edge {
                panel.put_pixel(x as u32, y as u32, image::Rgb([255, 255, 255]));
            }
        }
    }
}

/// A tabular explanation's panel: the largest attributions (`bars`, sorted by magnitude) as a bar
/// chart titled with the target and its score.
pub fn feature_chart(target: &str, score: f64, bars: &[Bar]) -> RgbImage {
    bar_chart(&format!("{target} ({score:.4})"), bars, CHART_BARS)
}

/// A figure as a decision reads it: at most four decimals, no trailing zeros.
fn number(v: &serde_json::Value) -> String {
    v.as_f64()
        .map(|x| {
            let s = format!("{x:.4}");
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        })
        .unwrap_or_default()
}

/// The text of a decision's rule or counterfactuals, when the answer holds them (`anchors`,
/// `counterfactual`): "what keeps the decision" and "what would change the decision", one line
/// per condition or change, under the target's title.
pub fn decision_lines(target: &str, details: &serde_json::Value) -> Option<Vec<String>> {
    let mut lines = vec![format!("Decision: {target}")];
    if let Some(anchor) = details.get("anchor").and_then(|a| a.as_array()) {
        lines.push(format!(
            "What keeps it (precision {}, coverage {}):",
            number(&details["precision"]),
            number(&details["coverage"])
        ));
        lines.extend(
            anchor
                .iter()
                .map(|c| format!("  IF {}", c["text"].as_str().unwrap_or(""))),
        );
        if anchor.is_empty() {
            lines.push("  no rule found within the budget".into());
        }
        return Some(lines);
    }
    let found = details.get("counterfactuals")?.as_array()?;
    let wanted = details["target_class"]["label"].as_str().unwrap_or("");
    lines.push(format!("What would change it to {wanted}:"));
    if found.is_empty() {
        lines.push(format!("  {}", details["reason"].as_str().unwrap_or("none found")));
    }
    for (i, cf) in found.iter().enumerate() {
        lines.push(format!(
            "  Option {} (cost {}, {} {}):",
            i + 1,
            number(&cf["cost"]),
            cf["prediction"]["label"].as_str().unwrap_or(""),
            number(&cf["prediction"]["score"])
        ));
        for ch in cf["changes"].as_array().into_iter().flatten() {
            lines.push(format!(
                "    {}: {} -> {}",
                ch["feature"].as_str().unwrap_or(""),
                number(&ch["from"]),
                number(&ch["to"])
            ));
        }
    }
    Some(lines)
}

/// A decision's rule (anchors) or counterfactuals as an HTML fragment for a page to embed: a
/// `<section class="explaind-decision">` with the decision, then the rule's conditions or one
/// table of changes per counterfactual. Every text from the model or the request is escaped.
pub fn decision_html(target: &str, details: &serde_json::Value) -> Option<String> {
    let text = |s: &str| html_escape::encode_text(s).into_owned();
    let mut html = format!(
        "<section class=\"explaind-decision\">\n<h3>Decision: {}</h3>\n",
        text(target)
    );
    if let Some(anchor) = details.get("anchor").and_then(|a| a.as_array()) {
        html.push_str(&format!(
            "<p>What keeps it (precision {}, coverage {}):</p>\n<ul>\n",
            number(&details["precision"]),
            number(&details["coverage"])
        ));
        for c in anchor {
            html.push_str(&format!("<li>IF {}</li>\n", text(c["text"].as_str().unwrap_or(""))));
        }
        if anchor.is_empty() {
            html.push_str("<li>no rule found within the budget</li>\n");
        }
        html.push_str("</ul>\n</section>\n");
        return Some(html);
    }
    let found = details.get("counterfactuals")?.as_array()?;
    html.push_str(&format!(
        "<p>What would change it to {}:</p>\n",
        text(details["target_class"]["label"].as_str().unwrap_or(""))
    ));
    if found.is_empty() {
        html.push_str(&format!(
            "<p>{}</p>\n",
            text(details["reason"].as_str().unwrap_or("none found"))
        ));
    }
    for (i, cf) in found.iter().enumerate() {
        html.push_str(&format!(
            "<table>\n<caption>Option {}: cost {}, {} {}</caption>\n\
             <thead><tr><th>feature</th><th>from</th><th>to</th></tr></thead>\n<tbody>\n",
            i + 1,
            number(&cf["cost"]),
            text(cf["prediction"]["label"].as_str().unwrap_or("")),
            number(&cf["prediction"]["score"])
        ));
        for ch in cf["changes"].as_array().into_iter().flatten() {
            html.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>\n",
                text(ch["feature"].as_str().unwrap_or("")),
                number(&ch["from"]),
                number(&ch["to"])
            ));
        }
        html.push_str("</tbody>\n</table>\n");
    }
    html.push_str("</section>\n");
    Some(html)
}

/// A panel of text lines (a decision's rule or counterfactuals).
pub fn text_panel(lines: &[String]) -> RgbImage {
    let width = lines.iter().map(|l| l.chars().count()).max().unwrap_or(0) as u32 * 8 + 16;
    super::captioned(
        &RgbImage::from_pixel(width.clamp(240, 1200), 1, image::Rgb([255, 255, 255])),
        lines,
        240,
    )
}

/// One PNG of every target's panel, side by side.
pub fn panels_png(panels: &[RgbImage]) -> Vec<u8> {
    png(&side_by_side(panels))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_as_html_escape_every_text() {
        let cf = serde_json::json!({
            "target_class": {"index": 1, "label": "<approve>"},
            "counterfactuals": [{"cost": 1.5, "prediction": {"label": "<approve>", "score": 0.61},
                "changes": [{"feature": "income & <b>bonus</b>", "from": 30000.0, "to": 42000.0}]}],
        });
        let html = decision_html("decline", &cf).unwrap();
        assert!(
            html.contains("<td>income &amp; &lt;b&gt;bonus&lt;/b&gt;</td><td>30000</td><td>42000</td>"),
            "{html}"
        );
        assert!(
            html.contains("change it to &lt;approve&gt;") && !html.contains("<b>"),
            "{html}"
        );
        let anchor = serde_json::json!({"anchor": [{"text": "age < 30"}], "precision": 0.97, "coverage": 0.2});
        let html = decision_html("decline", &anchor).unwrap();
        assert!(
            html.contains("<li>IF age &lt; 30</li>") && html.contains("precision 0.97"),
            "{html}"
        );
        assert!(decision_html("x", &serde_json::json!({"r2": 0.5})).is_none());
    }

    #[test]
    fn decisions_read_as_rules_and_changes() {
        let cf = serde_json::json!({
            "target_class": {"index": 1, "label": "approve"},
            "counterfactuals": [{"cost": 1.5, "prediction": {"label": "approve", "score": 0.61},
                "changes": [{"feature": "income", "from": 30000.0, "to": 42000.0}]}],
        });
        let lines = decision_lines("decline", &cf).unwrap();
        assert_eq!(lines[0], "Decision: decline");
        assert_eq!(lines[1], "What would change it to approve:");
        assert_eq!(lines[2], "  Option 1 (cost 1.5, approve 0.61):");
        assert_eq!(lines[3], "    income: 30000 -> 42000");
        let none = serde_json::json!({"target_class": {"label": "approve"}, "counterfactuals": [], "reason": "no valid counterfactual"});
        assert_eq!(
            decision_lines("decline", &none).unwrap()[2],
            "  no valid counterfactual"
        );
        let anchor =
            serde_json::json!({"precision": 0.97, "coverage": 0.25, "anchor": [{"text": "income > 40000.0000"}]});
        let lines = decision_lines("approve", &anchor).unwrap();
        assert_eq!(lines[1], "What keeps it (precision 0.97, coverage 0.25):");
        assert_eq!(lines[2], "  IF income > 40000.0000");
        assert!(decision_lines("x", &serde_json::json!({"shapley_values": []})).is_none());
        let panel = text_panel(&lines);
        assert!(panel.width() >= 240 && panel.height() > 3 * 18);
    }

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
