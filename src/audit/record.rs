//! What a record holds, built from the answer the caller gets (so the record says exactly what was
//! answered): who asked, the model and its hash, the input's hash (and the input when configured),
//! method, parameters after defaults, seed, targets, scores, an attribution summary, the map when
//! configured, and the service version.

use std::io::Write;
use std::time::SystemTime;

use base64::Engine;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::store::Columns;

/// What kind of request a record documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Prediction,
    Explanation,
    Uncertainty,
    /// A question asked of the model with concept sets or labelled rows (TCAV, layer information):
    /// an explanation of the model rather than of one input.
    Concepts,
    /// A recorded explanation run again (`POST /v1/audit/records/{id}/replay`), and its outcome.
    Replay,
    /// A subject's data keys destroyed.
    Erasure,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Prediction => "prediction",
            Kind::Explanation => "explanation",
            Kind::Uncertainty => "uncertainty",
            Kind::Concepts => "concepts",
            Kind::Replay => "replay",
            Kind::Erasure => "erasure",
        }
    }
}

/// Who asked, and under which request id.
#[derive(Debug, Clone, Default)]
pub struct Context {
    pub request_id: Option<String>,
    /// The API key's name, when keys are on.
    pub caller: Option<String>,
    /// The record's id when it must not be recorded twice (a shared job's id: a job run again after
    /// its replica stopped between recording and finishing keeps its one record); else a new one.
    pub record_id: Option<String>,
    /// Whose data the record holds (`x-audit-subject`): its sealed part is encrypted with that
    /// subject's key, destroyed when the subject is erased; none: a key of the record's own.
    pub subject: Option<String>,
}

/// One input: its sha256, its media type, and (when configured) the input itself.
#[derive(Debug, Clone)]
pub struct Evidence {
    pub sha256: String,
    pub media_type: String,
    pub data: Option<Value>,
}

impl Evidence {
    /// An encoded image, as uploaded.
    pub fn image(bytes: &[u8], keep: bool) -> Self {
        let media_type = if bytes.starts_with(&[0x89, b'P', b'N', b'G']) {
            "image/png"
        } else {
            "image/jpeg"
        };
        Self {
            sha256: hex::encode(Sha256::digest(bytes)),
            media_type: media_type.into(),
            data: keep.then(|| json!({"image_base64": base64::engine::general_purpose::STANDARD.encode(bytes)})),
        }
    }

    /// A feature vector in the model's order; hashed as its JSON text.
    pub fn features(values: &[f32], keep: bool) -> Self {
        let text = serde_json::to_string(values).unwrap_or_default();
        Self {
            sha256: hex::encode(Sha256::digest(text.as_bytes())),
            media_type: "application/json; features".into(),
            data: keep.then(|| json!({"features": values})),
        }
    }

    /// A text, as sent; hashed as its UTF-8 bytes.
    pub fn text(text: &str, keep: bool) -> Self {
        Self {
            sha256: hex::encode(Sha256::digest(text.as_bytes())),
            media_type: "text/plain; charset=utf-8".into(),
            data: keep.then(|| json!({ "text": text })),
        }
    }

    /// Rows fed to the model, known by the SHA-256 of their values as the model read them
    /// (preprocessed, f32 little-endian, in pass order): a concept question's data, which can come
    /// from sets that are replaced later.
    pub fn rows(sha256: String) -> Self {
        Self {
            sha256,
            media_type: "application/octet-stream; f32le rows".into(),
            data: None,
        }
    }

    fn to_json(&self) -> Value {
        let mut v = json!({"sha256": self.sha256, "media_type": self.media_type});
        if let Some(d) = &self.data {
            v["data"] = d.clone();
        }
        v
    }
}

/// A float array as deflate-compressed little-endian f32, base64.
pub fn pack_map(shape: &[usize], values: &[f32]) -> Value {
    let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    for v in values {
        let _ = enc.write_all(&v.to_le_bytes());
    }
    let bytes = enc.finish().unwrap_or_default();
    json!({"shape": shape, "encoding": "f32le+deflate+base64",
           "data": base64::engine::general_purpose::STANDARD.encode(bytes)})
}

/// The values of a packed map, or `None` when it is not one.
pub fn unpack_map(map: &Value) -> Option<(Vec<usize>, Vec<f32>)> {
    let shape: Vec<usize> = serde_json::from_value(map.get("shape")?.clone()).ok()?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(map.get("data")?.as_str()?)
        .ok()?;
    let mut raw = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::DeflateDecoder::new(&bytes[..]), &mut raw).ok()?;
    let values: Vec<f32> = raw
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    (values.len() == shape.iter().product::<usize>()).then_some((shape, values))
}

/// Detail fields worth keeping in a summary (the rest is bulky or derivable).
const DETAIL_KEYS: &[&str] = &[
    // What the answer cost in pass units, and how far a sampler or an integral got.
    "cost",
    "standard_error",
    "steps",
    "efficiency_gap",
    "base_value",
    "value",
    "r2",
    "intercept",
    "samples",
    "stopped",
    "top_positive",
    "top_negative",
    "feature_perturbation",
    "output_space",
    // Example-based answers: the rows and their scores are the explanation.
    "examples",
    "metric",
    "proponents",
    "opponents",
    "normalize",
    "checkpoints",
    // Decisions (anchors, counterfactual): the rule or the changes are the explanation, and the
    // decision report shows them.
    "anchor",
    "precision",
    "coverage",
    "counterfactuals",
    "target_class",
    "reason",
];

/// One target's summary: top features (tabular) or map statistics (images), with the method's
/// convergence and fit figures.
pub fn summarize(e: &Value) -> Value {
    let mut s = json!({});
    if let Some(features) = e.get("features").and_then(Value::as_array) {
        s["top_features"] = Value::Array(features.iter().take(10).cloned().collect());
    } else if let Some(values) = e["attributions"]["values"].as_array().filter(|v| !v.is_empty()) {
        let v: Vec<f64> = values.iter().filter_map(Value::as_f64).collect();
        let shape = &e["attributions"]["shape"];
        let width = shape[1].as_u64().unwrap_or(1).max(1) as usize;
        let (peak, max) = v.iter().enumerate().fold(
            (0, f64::NEG_INFINITY),
            |acc, (i, x)| if *x > acc.1 { (i, *x) } else { acc },
        );
        let min = v.iter().cloned().fold(f64::INFINITY, f64::min);
        let mean_abs = v.iter().map(|x| x.abs()).sum::<f64>() / v.len().max(1) as f64;
        s["map"] = json!({"shape": shape, "min": min, "max": max, "mean_abs": mean_abs,
                          "peak": [peak / width, peak % width]});
    }
    for key in ["convergence_delta", "layer"] {
        if let Some(v) = e.get(key) {
            s[key] = v.clone();
        }
    }
    if let Some(d) = e.get("details") {
        for key in DETAIL_KEYS {
            if let Some(v) = d.get(*key) {
                s[*key] = v.clone();
            }
        }
    }
    s
}

/// The per-target explanations of an explain answer (one target's sits at the top level).
fn explanations(response: &Value) -> Vec<&Value> {
    match response.get("explanations").and_then(Value::as_array) {
        Some(list) => list.iter().collect(),
        None => vec![response],
    }
}

/// Milliseconds since 1970, now.
pub fn now_ms() -> i64 {
    now().0
}

fn now() -> (i64, String) {
    let t = SystemTime::now();
    let ms = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    (ms, humantime::format_rfc3339_millis(t).to_string())
}

fn header(kind: Kind, ctx: &Context, inputs: &[Evidence], response: &Value) -> (String, i64, Value) {
    let id = ctx
        .record_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let (time_ms, time) = now();
    let body = json!({
        "id": id,
        "time": time,
        "time_ms": time_ms,
        "kind": kind.name(),
        "request_id": ctx.request_id,
        "caller": ctx.caller,
        "model": response["model"],
        "model_sha256": response["model_sha256"],
        "inputs": inputs.iter().map(Evidence::to_json).collect::<Vec<_>>(),
        "service": {"name": "explaind", "version": env!("CARGO_PKG_VERSION")},
    });
    (id, time_ms, body)
}

/// An explanation answer's recorded part: method, parameters, seed, and per target the summary
/// (and the attributions: tabular always, image maps when `keep_maps`).
fn explanation_part(response: &Value, keep_maps: bool) -> Value {
    let targets: Vec<Value> = explanations(response)
        .into_iter()
        .map(|e| {
            let mut t = json!({"target": e["target"], "summary": summarize(e)});
            // A detector's target is its detection (box and label), which a replay explains again.
            if let Some(d) = e.get("detection").filter(|d| !d.is_null()) {
                t["detection"] = d.clone();
            }
            if let Some(list) = e.get("evaluation").and_then(Value::as_array) {
                // The figures, not the curves.
                let figures: serde_json::Map<String, Value> = list
                    .iter()
                    .filter_map(|m| Some((m["metric"].as_str()?.to_string(), m["value"].clone())))
                    .collect();
                t["evaluation"] = Value::Object(figures);
            }
            if e.get("features").is_some() {
                // Tabular attributions are small: keep them whole.
                t["attributions"] = e["attributions"]["values"].clone();
            } else if keep_maps {
                let shape: Vec<usize> = serde_json::from_value(e["attributions"]["shape"].clone()).unwrap_or_default();
                let values: Vec<f32> = e["attributions"]["values"]
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_f64).map(|v| v as f32).collect())
                    .unwrap_or_default();
                t["map"] = pack_map(&shape, &values);
            }
            t
        })
        .collect();
    let mut part = json!({
        "method": response["method"],
        "params": response["params"],
        "seed": response["seed"],
        "explanation_id": response["id"],
        "targets": targets,
    });
    // A segmenter's region: with the targets, what names the scalar explained.
    if let Some(region) = response.get("region").filter(|r| !r.is_null()) {
        part["region"] = region.clone();
    }
    part
}

fn labels(targets: &Value) -> String {
    targets
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["target"]["label"].as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// The record of an explanation answer (`ExplainResponse` as JSON).
pub fn explanation(ctx: &Context, input: Evidence, response: &Value, keep_maps: bool) -> (Columns, Value) {
    let (id, time_ms, mut body) = header(Kind::Explanation, ctx, std::slice::from_ref(&input), response);
    let part = explanation_part(response, keep_maps);
    let target = labels(&part["targets"]);
    if let (Some(b), Value::Object(p)) = (body.as_object_mut(), part) {
        b.extend(p);
    }
    let columns = Columns {
        id,
        time_ms,
        kind: Kind::Explanation.name().into(),
        model: response["model"].as_str().unwrap_or_default().into(),
        method: response["method"].as_str().map(String::from),
        target: Some(target),
        key_id: None,
    };
    (columns, body)
}

/// The record of a replay: which record was run again (its id, place and hash), the model, input
/// evidence, method, parameters and seed it ran with, and `outcome` (whether the attributions
/// matched, and how they differ).
pub fn replay(
    ctx: &Context,
    original: &Value,
    inputs: &[Evidence],
    response: &Value,
    outcome: Value,
) -> (Columns, Value) {
    let (id, time_ms, mut body) = header(Kind::Replay, ctx, inputs, response);
    body["replay_of"] =
        json!({"id": original["id"], "seq": original["chain"]["seq"], "hash": original["chain"]["hash"]});
    for key in ["method", "params", "seed"] {
        body[key] = response[key].clone();
    }
    body["outcome"] = outcome;
    let columns = Columns {
        id,
        time_ms,
        kind: Kind::Replay.name().into(),
        model: response["model"].as_str().unwrap_or_default().into(),
        method: response["method"].as_str().map(String::from),
        target: Some(labels(&body["outcome"]["targets"])),
        key_id: None,
    };
    (columns, body)
}

/// An uncertainty estimate's recorded part: how it was made and its figures, without the samples.
fn uncertainty_part(u: &Value) -> Value {
    let mut part = json!({"setup": u["setup"], "top": u["predictions"][0]});
    for key in [
        "predictive_entropy",
        "expected_entropy",
        "mutual_information",
        "variation_ratio",
    ] {
        if let Some(v) = u.get(key) {
            part[key] = v.clone();
        }
    }
    if let Some(spread) = u.get("explanation_spread").filter(|s| !s.is_null()) {
        // The maps are as large as the image: their extent is enough to say how unstable it was.
        let std: Vec<f64> = spread["std"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_f64)
            .collect();
        let max = std.iter().copied().fold(0.0, f64::max);
        let mean = std.iter().sum::<f64>() / std.len().max(1) as f64;
        part["explanation_spread"] = json!({"method": spread["method"], "target": spread["target"],
                                            "shape": spread["shape"], "max_std": max, "mean_std": mean});
    }
    if u.get("predictive_entropy").is_none() {
        // Regression: the value's mean and spread.
        part["mean"] = u["mean"].clone();
        part["std"] = u["std"].clone();
    }
    part
}

/// The record of a prediction answer (`PredictResponse` as JSON) or of an uncertainty answer (the
/// same shape without predictions), one evidence per input; an attached explanation and
/// uncertainty are recorded with it.
pub fn prediction(
    kind: Kind,
    ctx: &Context,
    inputs: Vec<Evidence>,
    response: &Value,
    keep_maps: bool,
) -> (Columns, Value) {
    let (id, time_ms, mut body) = header(kind, ctx, &inputs, response);
    let rows: Vec<Value> = match response.get("instances").and_then(Value::as_array) {
        Some(list) => list.clone(),
        None => vec![
            json!({"predictions": response.get("predictions"), "outputs": response.get("outputs"),
                            "explanation": response.get("explanation"),
                            "uncertainty": response.get("uncertainty")}),
        ],
    };
    let target = rows
        .iter()
        .filter_map(|r| {
            r["predictions"][0]["label"]
                .as_str()
                .or(r["uncertainty"]["predictions"][0]["label"].as_str())
        })
        .collect::<Vec<_>>()
        .join(",");
    body["results"] = rows
        .iter()
        .map(|r| {
            let mut row = json!({});
            for key in ["predictions", "outputs"] {
                if let Some(v) = r.get(key).filter(|v| !v.is_null()) {
                    row[key] = v.clone();
                }
            }
            if let Some(e) = r.get("explanation").filter(|e| !e.is_null()) {
                row["explanation"] = explanation_part(e, keep_maps);
            }
            if let Some(u) = r.get("uncertainty").filter(|u| !u.is_null()) {
                row["uncertainty"] = uncertainty_part(u);
            }
            row
        })
        .collect();
    let columns = Columns {
        id,
        time_ms,
        kind: kind.name().into(),
        model: response["model"].as_str().unwrap_or_default().into(),
        method: None,
        target: Some(target),
        key_id: None,
    };
    (columns, body)
}

/// Fields of a concept answer left out of its record: the chart (drawn from the figures kept), the
/// CAVs (as long as a layer), the timings; and the receipt, added after.
const CONCEPT_BULK: &[&str] = &["chart_png", "stats", "audit_record"];

/// The record of a concept question's answer (`method`: `tcav` or `layer-information`; `response`:
/// its `TcavAnswer` or `LayerInformationAnswer` as JSON): the answer's figures per layer, what it
/// was asked with (concept, class, seed, draws), and the evidence of the rows it ran on.
pub fn concepts(method: &str, ctx: &Context, inputs: &[Evidence], response: &Value) -> (Columns, Value) {
    let (id, time_ms, mut body) = header(Kind::Concepts, ctx, inputs, response);
    let mut answer = response.clone();
    if let Some(a) = answer.as_object_mut() {
        for key in CONCEPT_BULK {
            a.remove(*key);
        }
        for layer in a.get_mut("layers").and_then(Value::as_array_mut).into_iter().flatten() {
            if let Some(l) = layer.as_object_mut() {
                l.remove("cav");
            }
        }
    }
    body["method"] = json!(method);
    body["seed"] = response["seed"].clone();
    body["answer"] = answer;
    // TCAV asks about a class; layer information about a source's labels.
    let target = response["target"].as_str().or(response["source"].as_str());
    let columns = Columns {
        id,
        time_ms,
        kind: Kind::Concepts.name().into(),
        model: response["model"].as_str().unwrap_or_default().into(),
        method: Some(method.into()),
        target: target.map(String::from),
        key_id: None,
    };
    (columns, body)
}

/// The record of an erasure: who asked, and the subject's reference (its hash, not the subject).
pub fn erasure(ctx: &Context, subject_ref: &str) -> (Columns, Value) {
    let id = uuid::Uuid::new_v4().to_string();
    let (time_ms, time) = now();
    let body = json!({
        "id": id,
        "time": time,
        "time_ms": time_ms,
        "kind": Kind::Erasure.name(),
        "request_id": ctx.request_id,
        "caller": ctx.caller,
        "subject_ref": subject_ref,
        "service": {"name": "explaind", "version": env!("CARGO_PKG_VERSION")},
    });
    let columns = Columns {
        id,
        time_ms,
        kind: Kind::Erasure.name().into(),
        model: String::new(),
        method: None,
        target: None,
        key_id: None,
    };
    (columns, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_pack_and_unpack_exactly() {
        let values: Vec<f32> = (0..100).map(|i| (i as f32).sin()).collect();
        let packed = pack_map(&[10, 10], &values);
        assert_eq!(unpack_map(&packed), Some((vec![10, 10], values)));
    }
}
