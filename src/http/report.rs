//! `GET /v1/audit/records/{id}/report`: a recorded decision as a page a person can read (GDPR
//! art. 15's "meaningful information about the logic involved"): gathers what the record, the
//! model's manifest and the method registry say, and leaves the drawing to `render::report_html`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Extension, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::audit::{draw, record};
use super::auth::{audit_context, Caller};
use super::error::{ApiError, ProblemKind};
use super::explain::ExplainOptions;
use super::replay::{input_of, rerun};
use super::{pipeline, AppState};
use crate::audit::Kind;
use crate::render::{self, short, Factor, Figure, Report};
use crate::runtime::LoadedModel;

/// Factors named in words (the chart shows more).
const FACTORS: usize = 5;

/// What each recorded faithfulness figure means, by the summary's or the evaluation's name.
fn meaning(name: &str) -> &'static str {
    match name {
        "convergence_delta" => {
            "completeness: the attributions add up to the score's change from the baseline, off by this much"
        }
        "efficiency_gap" => "the contributions add up to the prediction, off by this much",
        "r2" => "how much of the model's behaviour near this input the explanation's simple model reproduces (1 = all)",
        "precision" => "how often the model keeps its decision when the rule holds",
        "coverage" => "how many inputs the rule applies to",
        "deletion" => "how fast the score falls as the most important parts are removed (lower is more faithful)",
        "insertion" => "how fast the score rises as the most important parts are added back (higher is more faithful)",
        "mu_fidelity" => "how well the attributions predict the score's drop when parts are removed (1 = perfectly)",
        "pixel_flipping" => "the score's fall as parts are removed one after another (a lower area is more faithful)",
        "sparseness" => "how few parts carry the explanation (higher: fewer)",
        "complexity" => "how spread the explanation is over the parts (lower: fewer carry it)",
        "model_randomization" => {
            "how alike the explanation stays when the model's weights are re-drawn (low: it depends on the model)"
        }
        _ => "a recorded quality figure of this explanation",
    }
}

/// A recorded decision, as a page: the decision and its score, the main factors in words with
/// their chart or heat map, what would have changed it, how sure the model was, the model and
/// the method (and why it is faithful), and the record's place in the audit chain.
///
/// `counterfactual=true` computes what would have changed the decision for a tabular record that
/// is not itself a counterfactual answer (needs the stored input and the model with the recorded
/// sha256; recorded as any explanation is).
#[utoipa::path(get, path = "/v1/audit/records/{id}/report", tag = "audit",
    params(
        ("id" = String, Path, description = "record id"),
        ("counterfactual" = Option<bool>, Query, description = "compute what would have changed a tabular decision (default false)"),
    ),
    responses(
        (status = 200, content_type = "text/html", body = String, description = "the decision report, one self-contained HTML page"),
        (status = 400, body = super::error::Problem, content_type = "application/problem+json", description = "bad query"),
        (status = 401, body = super::error::Problem, content_type = "application/problem+json", description = "no or bad API key"),
        (status = 403, body = super::error::Problem, content_type = "application/problem+json", description = "the key lacks the audit scope"),
        (status = 404, body = super::error::Problem, content_type = "application/problem+json", description = "no such record, or it explains no decision"),
        (status = 409, body = super::error::Problem, content_type = "application/problem+json", description = "counterfactual=true, but the record's input or model is not available"),
    ))]
pub async fn report(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    caller: Option<Extension<Caller>>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let compute = match q.get("counterfactual").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => {
            return Err(ApiError::new(
                ProblemKind::InvalidRequest,
                "counterfactual must be true or false",
            ))
        }
    };
    let rec = record(&state, &id).await?;
    // An explanation record, or a prediction's attached explanation; a prediction or an
    // uncertainty estimate recorded alone still documents its decision.
    let explanation = if rec["kind"] == "explanation" {
        rec.clone()
    } else {
        rec["results"][0]["explanation"].clone()
    };
    let row = &rec["results"][0];
    let decided = row["predictions"][0]
        .as_object()
        .or(row["uncertainty"]["top"].as_object())
        .map(|p| serde_json::json!({"target": p, "summary": {}}));
    let explained = explanation["targets"][0].is_object();
    let Some(target) = explanation["targets"][0]
        .as_object()
        .map(|_| explanation["targets"][0].clone())
        .or(decided)
    else {
        return Err(ApiError::new(
            ProblemKind::NotFound,
            format!(
                "record `{id}` documents no decision (it is a {})",
                rec["kind"].as_str().unwrap_or("record")
            ),
        ));
    };
    let sha256 = rec["model_sha256"].as_str().unwrap_or_default().to_string();
    let name = rec["model"].as_str().unwrap_or_default().to_string();
    // The very model when still loaded; else the one under its name, for names and descriptions.
    let exact = state.registry.iter().find(|m| m.sha256 == sha256).cloned();
    let named = exact.clone().or_else(|| state.registry.get(&name).cloned());

    let mut report = gather(&state, &rec, &explanation, &target, exact.as_deref(), named.as_deref());
    let method = explanation["method"].as_str().unwrap_or_default();
    let tabular = named.as_ref().is_some_and(|m| m.spec.tabular.is_some());
    if compute && method != "counterfactual" {
        let model = exact.clone().ok_or_else(|| {
            ApiError::new(
                ProblemKind::NotReplayable,
                format!("the model the record names (sha256 {sha256}) is no longer loaded: no counterfactual can be computed"),
            )
        })?;
        if !tabular {
            return Err(ApiError::new(
                ProblemKind::InvalidRequest,
                "counterfactual=true computes counterfactuals of tabular decisions; this record's model is not tabular",
            ));
        }
        let raw = input_of(&rec, 0)?;
        let inputs = vec![raw.clone()];
        let audit = pipeline::audit(
            &state,
            Kind::Explanation,
            false,
            &model,
            &inputs,
            audit_context(&headers, caller)?,
        )
        .await?;
        let options = ExplainOptions {
            region: None,
            params: None,
            target: None,
            seed: Some(0),
            include: None,
            render: None,
            evaluate: None,
        };
        let answer = rerun(&state, model, "counterfactual", options, raw, audit, started).await?;
        if let Some(e) = answer.single.as_ref().or(answer.explanations.iter().flatten().next()) {
            // An anchor's rule (what keeps the decision) stays above what would change it.
            let computed = e
                .details
                .as_ref()
                .and_then(|d| render::decision_html(&e.target.label, d));
            report.counterfactual_html = match (report.counterfactual_html.take(), computed) {
                (Some(rule), Some(cf)) => Some(rule + &cf),
                (rule, cf) => cf.or(rule),
            };
            report.counterfactual_note = match &answer.audit_record {
                Some(r) => format!(
                    "Computed for this report from the recorded input (recorded as {}).",
                    r.id
                ),
                None => "Computed for this report from the recorded input.".into(),
            };
        }
    } else if report.counterfactual_html.is_none() {
        report.counterfactual_note = if method == "counterfactual" {
            "The record kept no counterfactual (it was made before explaind recorded them).".into()
        } else if tabular {
            "Not recorded with this decision; ask for this report with ?counterfactual=true to compute one.".into()
        } else {
            "Counterfactuals are computed for tabular decisions only.".into()
        };
    }

    // Drawing the chart or the heat map is CPU work: off the async threads.
    let text = rec["inputs"][0]["media_type"]
        .as_str()
        .is_some_and(|t| t.starts_with("text/"));
    if !explained {
        report.picture_missing = Some("This decision was recorded without an explanation.".into());
    } else if text {
        report.picture_missing =
            Some("The explanation weighs each token of the text; the record holds the values per token.".into());
    } else {
        let registry = state.registry.clone();
        let (rec2, target2) = (rec.clone(), target.clone());
        let picture = tokio::task::spawn_blocking(move || draw(&rec2, &target2, &registry))
            .await
            .map_err(ApiError::internal)?;
        match picture {
            Ok(png) => report.picture = Some(png),
            Err(e) => report.picture_missing = Some(e.detail),
        }
    }
    let html = tokio::task::spawn_blocking(move || render::report_html(&report))
        .await
        .map_err(ApiError::internal)?;
    let mut response = html.into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    // Nothing on the page runs or loads: no script, images inline.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; img-src data:; style-src 'unsafe-inline'"),
    );
    Ok(response)
}

/// Everything the record says, in the report's terms (the counterfactual is added by the caller).
fn gather(
    state: &AppState,
    rec: &Value,
    explanation: &Value,
    target: &Value,
    exact: Option<&LoadedModel>,
    named: Option<&LoadedModel>,
) -> Report {
    let summary = &target["summary"];
    let decision = target["target"]["label"].as_str().unwrap_or("?").to_string();
    let method = explanation["method"].as_str().unwrap_or("none").to_string();
    let descriptions = named.and_then(|m| m.spec.tabular.as_ref()).map(|t| &t.descriptions);
    let factors: Vec<Factor> = summary["top_features"]
        .as_array()
        .into_iter()
        .flatten()
        .take(FACTORS)
        .map(|f| {
            let name = f["name"].as_str().unwrap_or_default().to_string();
            Factor {
                description: descriptions.and_then(|d| d.get(&name)).cloned(),
                name,
                value: f["value"].as_f64(),
                attribution: f["attribution"].as_f64().unwrap_or(0.0),
            }
        })
        .collect();
    let mut map_words = Vec::new();
    let image = rec["inputs"][0]["media_type"]
        .as_str()
        .is_some_and(|t| t.starts_with("image/"));
    if let Some(map) = summary.get("map").filter(|_| image) {
        map_words.push(where_it_looked(map));
    }
    let mut notes = Vec::new();
    if exact.is_none() {
        notes.push(format!(
            "The model with sha256 {} is no longer loaded; names and descriptions come from the model loaded as `{}` now, \
             if any.",
            rec["model_sha256"].as_str().unwrap_or_default(),
            rec["model"].as_str().unwrap_or_default()
        ));
    }
    let mut faithfulness = Vec::new();
    for key in ["convergence_delta", "efficiency_gap", "r2", "precision", "coverage"] {
        if let Some(v) = summary[key].as_f64() {
            faithfulness.push(Figure {
                name: key.replace('_', " "),
                value: short(v),
                meaning: meaning(key).into(),
            });
        }
    }
    for (key, v) in target["evaluation"].as_object().into_iter().flatten() {
        faithfulness.push(Figure {
            name: key.replace('_', " "),
            value: v.as_f64().map(short).unwrap_or_else(|| v.to_string()),
            meaning: meaning(key).into(),
        });
    }
    let mut certainty = Vec::new();
    let probability = !named.is_some_and(|m| m.spec.task.is_regression());
    if let Some(u) = rec["results"][0].get("uncertainty").filter(|u| u.is_object()) {
        for (key, meaning) in [
            (
                "predictive_entropy",
                "how spread the model's answer is over the classes (0 = certain)",
            ),
            (
                "mutual_information",
                "how much of that spread comes from the model not knowing (BALD)",
            ),
            (
                "variation_ratio",
                "how often the samples disagreed with the most common answer",
            ),
            ("std", "the spread of the predicted value"),
        ] {
            if let Some(v) = u[key].as_f64() {
                certainty.push(Figure {
                    name: key.replace('_', " "),
                    value: short(v),
                    meaning: meaning.into(),
                });
            }
        }
    }
    let counterfactual_html = (method == "counterfactual" || method == "anchors")
        .then(|| render::decision_html(&decision, summary))
        .flatten();
    Report {
        score: target["target"]["score"].as_f64(),
        probability,
        model: rec["model"].as_str().unwrap_or_default().into(),
        version: exact.and_then(|m| m.spec.version.clone()),
        sha256: rec["model_sha256"].as_str().unwrap_or_default().into(),
        model_description: exact.and_then(|m| m.spec.description.clone()),
        method_summary: state
            .methods
            .get(&method)
            .map(|m| m.summary().to_string())
            .unwrap_or_default(),
        method,
        factors,
        map_words,
        picture: None,
        picture_missing: None,
        counterfactual_note: if counterfactual_html.is_some() {
            "As recorded with this decision.".into()
        } else {
            String::new()
        },
        counterfactual_html,
        certainty,
        faithfulness,
        record_id: rec["id"].as_str().unwrap_or_default().into(),
        time: rec["time"].as_str().unwrap_or_default().into(),
        seq: rec["chain"]["seq"].as_i64().unwrap_or(0),
        hash: rec["chain"]["hash"].as_str().unwrap_or_default().into(),
        prev_hash: rec["chain"]["prev_hash"].as_str().unwrap_or_default().into(),
        notes,
        decision,
    }
}

/// Where an image map weighed most, in words ("the upper left of the image").
fn where_it_looked(map: &Value) -> String {
    let (h, w) = (
        map["shape"][0].as_f64().unwrap_or(1.0).max(1.0),
        map["shape"][1].as_f64().unwrap_or(1.0).max(1.0),
    );
    let (row, col) = (
        map["peak"][0].as_f64().unwrap_or(0.0),
        map["peak"][1].as_f64().unwrap_or(0.0),
    );
    let third = |x: f64, n: f64, words: [&'static str; 3]| words[((x / n * 3.0) as usize).min(2)];
    let vertical = third(row, h, ["upper", "middle", "lower"]);
    let horizontal = third(col, w, ["left", "centre", "right"]);
    let place = if (vertical, horizontal) == ("middle", "centre") {
        "centre".to_string()
    } else {
        format!("{vertical} {horizontal}")
    };
    format!(
        "The part of the input that weighed most for this decision lies in the {place} of the image (row {row}, column {col} \
         of {h} x {w}); the heat map shows where the model looked, strongest in red."
    )
}
