//! An explanation's answer: per-target JSON drawn from the attributions (maps mapped back onto the
//! original image by `render`), and the PNG panels when asked.

use std::time::Instant;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;

use super::request::{
    Array, Attributions, ExplainResponse, ExplainStats, FeatureAttribution, Include, TargetExplanation, TextAttribution,
};
use super::{AnswerAs, ValidExplain};
use crate::explain::TargetAttribution;
use crate::http::pipeline::{Done, Drawn, Picture};
use crate::http::prepare::Prepared;
use crate::jobs::ExplainResult;
use crate::render;
use crate::runtime::text::Encoded;

/// An HTML fragment of the answer (one section per target): the decision's rule or
/// counterfactuals, or the text with its words highlighted.
fn html(body: &ExplainResponse, text: Option<&Encoded>) -> String {
    std::iter::once(&body.single)
        .flatten()
        .chain(body.explanations.iter().flatten())
        .filter_map(|e| match text {
            Some(text) => Some(render::text_html(
                &e.target.label,
                e.target.score.into(),
                &highlights(text, &e.attributions.values),
            )),
            None => render::decision_html(&e.target.label, e.details.as_ref()?),
        })
        .collect()
}

/// The original text cut into words (each with the sum of its tokens' values) and what lies
/// between them, for drawing.
pub fn highlights(text: &Encoded, values: &[f32]) -> Vec<render::Highlight> {
    let mut pieces = Vec::new();
    let mut at = 0;
    for word in text.features(true) {
        let (written, start, end) = text.span(&word);
        if start > at {
            pieces.push(render::Highlight {
                text: text.slice(at, start).to_string(),
                value: None,
            });
        }
        pieces.push(render::Highlight {
            text: written,
            value: Some(word.iter().filter_map(|&i| values.get(i)).sum()),
        });
        at = at.max(end);
    }
    if at < text.chars() {
        pieces.push(render::Highlight {
            text: text.slice(at, text.chars()).to_string(),
            value: None,
        });
    }
    pieces
}

/// Draws the answer: maps over the original image, features, and the PNG panels or the HTML
/// fragment when `answer` asks for one.
pub(super) fn build_answer(
    valid: &ValidExplain,
    prepared: &Prepared,
    result: ExplainResult,
    answer: AnswerAs,
    max_map_pixels: u64,
    started: Instant,
) -> Drawn<ExplainResponse> {
    let wants_png = answer == AnswerAs::Png;
    let (explanations, panels) = explanations(valid, &result, prepared, wants_png, max_map_pixels);
    let mut body = explain_body(valid, explanations, &result, started);
    body.truncated = prepared.text.as_ref().map(|t| t.truncated);
    let picture = match answer {
        AnswerAs::Json => None,
        AnswerAs::Png => Some(Picture::Png(render::panels_png(&panels))),
        AnswerAs::Html => Some(Picture::Html(html(&body, prepared.text.as_deref()))),
    };
    Drawn { body, picture }
}

/// The W3C `Server-Timing` header of an answer: browsers' developer tools and tracing proxies
/// show where the time went without reading the body.
fn server_timing(stats: &ExplainStats) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!(
        "model;dur={:.3};desc=\"ONNX Runtime\", worker;dur={:.3};desc=\"method\", total;dur={:.3}",
        stats.model_ms, stats.worker_ms, stats.wall_ms
    ))
    .ok()
}

/// The response: JSON as serialised once, the PNG with the explanation's id, targets and audit
/// record as headers, or the HTML fragment with its id; each with `Server-Timing`.
pub(super) fn respond(done: Done<ExplainResponse>) -> Response {
    let timing = server_timing(&done.body.stats);
    let id = HeaderValue::from_str(&done.body.id).ok();
    let mut response = match done.picture {
        Some(Picture::Png(png)) => png_response(&done.body, png),
        Some(Picture::Html(_)) => {
            let mut r = done.into_response();
            if let Some(v) = id {
                r.headers_mut().insert("x-explanation-id", v);
            }
            r
        }
        None => done.into_response(),
    };
    if let Some(t) = timing {
        response.headers_mut().insert("server-timing", t);
    }
    response
}

/// The PNG answer, with the explanation's id, targets and audit record as headers.
fn png_response(body: &ExplainResponse, png: Vec<u8>) -> Response {
    let targets: Vec<String> = std::iter::once(&body.single)
        .flatten()
        .chain(body.explanations.iter().flatten())
        .map(|e| format!("{}:{}", e.target.index, ascii(&e.target.label)))
        .collect();
    let mut response = (StatusCode::OK, png).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("image/png"));
    if let Ok(v) = HeaderValue::from_str(&body.id) {
        headers.insert("x-explanation-id", v);
    }
    if let Ok(v) = HeaderValue::from_str(&targets.join(",")) {
        headers.insert("x-explanation-target", v);
    }
    if let Some(r) = body
        .audit_record
        .as_ref()
        .and_then(|r| HeaderValue::from_str(&r.id).ok())
    {
        headers.insert("x-audit-record", r);
    }
    response
}

/// Per-target JSON explanations, and the overlay panels when `panels` is asked.
pub fn explanations(
    valid: &ValidExplain,
    result: &ExplainResult,
    prepared: &Prepared,
    panels: bool,
    max_map_pixels: u64,
) -> (Vec<TargetExplanation>, Vec<image::RgbImage>) {
    let include = valid.include.as_slice();
    let embed = include.contains(&Include::Overlay);
    let draw = (panels || embed).then_some(&valid.render);
    let mut drawn = Vec::new();
    let mut explanations = Vec::new();
    for (i, a) in result.attributions.iter().enumerate() {
        let (shape, values, mut panel) = placed_values(a, prepared, draw, max_map_pixels);
        let detection = detection_boxes(valid, result, a, prepared, panel.as_mut());
        let (tokens, words) = match &prepared.text {
            Some(text) => {
                let (tokens, words) = text_lists(text, &values);
                (Some(tokens), include.contains(&Include::Words).then_some(words))
            }
            None => (None, None),
        };
        let features = feature_list(valid, prepared, &values);
        let mut panel = panel.or_else(|| {
            draw?;
            other_panel(a, prepared, &values, features.as_deref())
        });
        // A segmentation target's region, outlined on its heat map.
        if let (Some(p), Some(Some(region)), Some(geometry)) =
            (panel.as_mut(), result.regions.get(i), prepared.geometry.as_ref())
        {
            let grid = (region.width, region.height);
            render::outline_region(p, &region.inside, grid, geometry, max_map_pixels);
        }
        let overlay_png = match (&panel, embed) {
            (Some(p), true) => Some(base64::engine::general_purpose::STANDARD.encode(render::png(p))),
            _ => None,
        };
        drawn.extend(panel);
        let tensor = include.contains(&Include::Tensor).then(|| Array {
            shape: a.tensor.shape.clone(),
            values: a.tensor.as_f32().unwrap_or(&[]).to_vec(),
        });
        explanations.push(TargetExplanation {
            target: a.target.clone(),
            detection,
            attributions: Attributions { shape, values, tensor },
            features,
            tokens,
            words,
            convergence_delta: a.convergence_delta,
            layer: a.layer.clone(),
            overlay_png,
            details: Some(with_cost(a.details.clone(), &result.cost)),
            evaluation: result.evaluations.get(i).filter(|e| !e.is_empty()).cloned(),
        });
    }
    (explanations, drawn)
}

/// A detector's explained detection in the image's pixels, and its box outlined on the panel (the
/// input's other detections faint); `None` for other models.
fn detection_boxes(
    valid: &ValidExplain,
    result: &ExplainResult,
    a: &TargetAttribution,
    prepared: &Prepared,
    panel: Option<&mut image::RgbImage>,
) -> Option<crate::runtime::detect::DetectionAnswer> {
    let spec = &valid.model.spec;
    let (image, geometry) = (spec.image.as_ref()?, prepared.geometry.as_ref()?);
    spec.detection.as_ref()?;
    let to_original = |b: [f32; 4]| geometry.box_to_original(b, image.width, image.height);
    if let Some(panel) = panel {
        let scale = panel.width() as f32 / geometry.original_width.max(1) as f32;
        // The others first, so that the explained box is drawn over them.
        let (target, others): (Vec<_>, Vec<_>) = result.detections.iter().partition(|d| d.position == a.target.index);
        for (d, style) in others
            .iter()
            .map(|d| (d, render::BoxStyle::Faint))
            .chain(target.iter().map(|d| (d, render::BoxStyle::Target)))
        {
            render::outline_box(panel, to_original(d.bbox).map(|v| v * scale), style);
        }
    }
    let d = result.detections.iter().find(|d| d.position == a.target.index)?;
    Some(crate::runtime::detect::DetectionAnswer {
        bbox: to_original(d.bbox),
        label: a.target.label.clone(),
        score: d.score,
    })
}

/// A target's `details` with what the whole answer cost added as `cost`.
fn with_cost(details: Option<serde_json::Value>, cost: &crate::runtime::job::PassCost) -> serde_json::Value {
    let mut details = details.unwrap_or_else(|| serde_json::json!({}));
    if let Some(fields) = details.as_object_mut() {
        fields.insert("cost".into(), serde_json::to_value(cost).unwrap_or_default());
    }
    details
}

/// An attribution's values as answered, with their shape: a map brought back onto the original
/// image (and its overlay panel when `draw` asks), a text's map per token, else the tensor as is.
fn placed_values(
    a: &TargetAttribution,
    prepared: &Prepared,
    draw: Option<&render::RenderOptions>,
    max_map_pixels: u64,
) -> (Vec<usize>, Vec<f32>, Option<image::RgbImage>) {
    match (&a.map, &prepared.geometry, &prepared.original) {
        (Some(map), Some(geometry), Some(original)) => {
            let size = (map.shape[1], map.shape[0]);
            let on = render::map_on_image(
                map.as_f32().unwrap_or(&[]),
                size,
                geometry,
                original,
                draw,
                max_map_pixels,
            );
            (vec![on.height as usize, on.width as usize], on.values, on.panel)
        }
        (Some(map), None, None) if prepared.text.is_some() => {
            (map.shape.clone(), map.as_f32().unwrap_or(&[]).to_vec(), None)
        }
        _ => (a.tensor.shape.clone(), a.tensor.as_f32().unwrap_or(&[]).to_vec(), None),
    }
}

/// The picture of an input that is not an image. Texts: the text with its words highlighted;
/// tabular models: the decision's rule or counterfactuals as text, when the method gives them,
/// else a bar chart of the largest attributions.
fn other_panel(
    a: &TargetAttribution,
    prepared: &Prepared,
    values: &[f32],
    features: Option<&[FeatureAttribution]>,
) -> Option<image::RgbImage> {
    if let Some(made) = made_image(a) {
        return Some(made);
    }
    if let Some(text) = &prepared.text {
        let pieces = highlights(text, values);
        return Some(render::text_png(&a.target.label, a.target.score.into(), &pieces));
    }
    if let Some(lines) = a
        .details
        .as_ref()
        .and_then(|d| render::decision_lines(&a.target.label, d))
    {
        return Some(render::text_panel(&lines));
    }
    let bars: Vec<render::Bar> = features?.iter().map(render::Bar::from).collect();
    Some(render::feature_chart(&a.target.label, a.target.score.into(), &bars))
}

/// The picture a method made rather than a map over the input (activation maximisation's image,
/// `details.image_png`), enlarged with nearest neighbours to at least 224 pixels a side.
fn made_image(a: &TargetAttribution) -> Option<image::RgbImage> {
    let encoded = a.details.as_ref()?.get("image_png")?.as_str()?;
    let bytes = base64::engine::general_purpose::STANDARD.decode(encoded).ok()?;
    let made = image::load_from_memory_with_format(&bytes, image::ImageFormat::Png)
        .ok()?
        .to_rgb8();
    let k = (224 / made.width().max(made.height()).max(1)).max(1);
    Some(image::imageops::resize(
        &made,
        made.width() * k,
        made.height() * k,
        image::imageops::FilterType::Nearest,
    ))
}

/// A text's attributions per token (every token, in order) and per word (the sum over its tokens).
fn text_lists(text: &Encoded, values: &[f32]) -> (Vec<TextAttribution>, Vec<TextAttribution>) {
    let tokens = text
        .tokens
        .iter()
        .zip(values)
        .map(|(t, v)| TextAttribution {
            text: t.text.clone(),
            start: t.start,
            end: t.end,
            value: *v,
        })
        .collect();
    let words = text
        .features(true)
        .iter()
        .map(|word| {
            let (text_of, start, end) = text.span(word);
            TextAttribution {
                text: text_of,
                start,
                end,
                value: word.iter().filter_map(|&i| values.get(i)).sum(),
            }
        })
        .collect();
    (tokens, words)
}

/// A tabular input's attributions by feature, largest magnitude first.
fn feature_list(valid: &ValidExplain, prepared: &Prepared, values: &[f32]) -> Option<Vec<FeatureAttribution>> {
    let (inputs, tabular) = prepared.features.as_ref().zip(valid.model.spec.tabular.as_ref())?;
    let mut list: Vec<FeatureAttribution> = tabular
        .features
        .iter()
        .zip(inputs)
        .zip(values)
        .map(|((name, value), attribution)| FeatureAttribution {
            name: name.clone(),
            value: *value,
            attribution: *attribution,
        })
        .collect();
    list.sort_by(|a, b| b.attribution.abs().total_cmp(&a.attribution.abs()));
    Some(list)
}

impl From<&FeatureAttribution> for render::Bar {
    fn from(f: &FeatureAttribution) -> Self {
        render::Bar {
            name: f.name.clone(),
            value: f.value,
            attribution: f.attribution,
        }
    }
}

/// The JSON body of an explanation.
pub fn explain_body(
    valid: &ValidExplain,
    mut explanations: Vec<TargetExplanation>,
    result: &ExplainResult,
    started: Instant,
) -> ExplainResponse {
    let model = &valid.model;
    let random = valid.params.capabilities().random;
    let stats = ExplainStats {
        model_rows: result.rows,
        planned_rows: result.planned_rows,
        model_runs: result.runs,
        wall_ms: started.elapsed().as_secs_f64() * 1e3,
        worker_ms: result.worker_time.as_secs_f64() * 1e3,
        model_ms: result.model_time.as_secs_f64() * 1e3,
    };
    let (single, many) = if explanations.len() == 1 {
        (explanations.pop(), None)
    } else {
        (None, Some(explanations))
    };
    ExplainResponse {
        id: uuid::Uuid::new_v4().to_string(),
        model: model.name.clone(),
        model_sha256: model.sha256.clone(),
        method: valid.params.method().to_string(),
        params: valid.params.echo().clone(),
        seed: random.then_some(valid.seed),
        region: valid.region.clone(),
        truncated: None,
        single,
        explanations: many,
        stats,
        audit_record: None,
    }
}

/// A header-safe version of a label.
fn ascii(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                if c == ',' {
                    ';'
                } else {
                    c
                }
            } else {
                '?'
            }
        })
        .collect()
}
