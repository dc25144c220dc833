//! The OpenAPI document, generated from the handlers and types by utoipa. `openapi/openapi.json` is
//! its committed copy; a test fails when the two drift apart.

use std::collections::BTreeMap;

use serde_json::{json, Value};
use utoipa::OpenApi;

use crate::explain::method::{AnyMethod, NamedSchemas, CONFIGURED_MAX_SAMPLES};
use crate::explain::{Limits, Methods};

use super::{
    audit, compare, concepts, error, evaluate, explain, health, input, jobs, models, patterns, predict, problems,
    protocols, reference, replay, report, uncertainty,
};

/// The API description.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "explaind",
        description = "Explains the predictions of ONNX models over HTTP. Errors are RFC 9457 problem details \
                       (`application/problem+json`) whose `type` is a stable URI documented at `/problems/{slug}`.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(
        health::healthz,
        health::readyz,
        health::metrics,
        problems::problem_doc,
        models::list_models,
        models::get_model,
        reference::upload,
        reference::suspects,
        reference::row,
        concepts::upload_concept,
        concepts::list_concepts,
        concepts::tcav,
        concepts::layer_information,
        patterns::fit,
        patterns::patterns,
        predict::predict,
        uncertainty::uncertainty,
        explain::explain,
        evaluate::evaluate,
        compare::compare,
        jobs::submit,
        jobs::get_job,
        jobs::cancel_job,
        jobs::job_events,
        audit::get_record,
        audit::list_records,
        audit::record_overlay,
        replay::replay,
        report::report,
        audit::export,
        audit::verify,
        protocols::vertex::predict_path,
        protocols::vertex::explain_path,
        audit::erase_subject,
        protocols::kserve_v1::verb,
        protocols::oip::server_metadata,
        protocols::oip::live,
        protocols::oip::ready,
        protocols::oip::model_metadata,
        protocols::oip::model_ready,
        protocols::oip::infer,
    ),
    components(schemas(
        error::Problem,
        input::FeaturesJson,
        crate::jobs::concepts::TcavAnswer,
        crate::jobs::concepts::LayerInformationAnswer,
        crate::jobs::patterns::PatternFit,
    )),
    tags(
        (name = "models", description = "Loaded models and predictions"),
        (name = "explanations", description = "Why a model predicted what it did"),
        (name = "reference", description = "A model's reference set: likely mislabels, and its rows"),
        (name = "concepts", description = "Concept sets, TCAV, and what each layer knows about a label"),
        (name = "jobs", description = "Explanations run in the background, with progress"),
        (name = "audit", description = "The tamper-evident record of predictions and explanations"),
        (name = "operations", description = "Health, readiness, metrics, API documents"),
        (name = "vertex", description = "Vertex AI's online prediction routes, in its request, answer and error shapes"),
        (name = "kserve v1", description = "KServe's V1 protocol: `:predict` and `:explain`"),
        (name = "open inference protocol", description = "KServe V2 / Triton: metadata, health, infer (JSON and binary tensors)"),
    )
)]
pub struct ApiDoc;

/// A binary body (an image): a string of bytes in the document, where utoipa writes `Vec<u8>` as
/// an array of integers that clients would try to parse.
pub struct Binary;

impl utoipa::PartialSchema for Binary {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)))
            .into()
    }
}

impl utoipa::ToSchema for Binary {}

/// One event of a job's stream (`text/event-stream`), as the document describes each event.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // A shape for the document; the stream writes its events with axum's `Event`.
pub struct JobEvent {
    /// `progress` while the job runs; then `done`, `failed` or `cancelled`.
    #[schema(pattern = "^(progress|done|failed|cancelled)$")]
    event: String,
    /// The job (a `JobView`) as JSON.
    #[schema(content_media_type = "application/json")]
    data: String,
}

/// The explain path template that [`document`] expands into one path per method.
const EXPLAIN_TEMPLATE: &str = "/v1/models/{model}/explain/{method}";

/// The document as pretty JSON with a trailing newline (the form committed under `openapi/`, with
/// the default limits).
pub fn document_json(methods: &Methods, limits: Limits) -> String {
    let mut text = serde_json::to_string_pretty(&document_value(methods, limits))
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    text.push('\n');
    text
}

/// The API document for the methods served, versioned like the crate: one explain path per
/// method, each with its parameters' schema, bounded by the service's `limits`.
pub fn document_value(methods: &Methods, limits: Limits) -> Value {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    let mut value = serde_json::to_value(&doc).unwrap_or_default();
    let template = value["paths"]
        .as_object_mut()
        .and_then(|p| p.remove(EXPLAIN_TEMPLATE))
        .unwrap_or_default();
    let request = value["components"]["schemas"]["ExplainRequest"].clone();
    one_or_several_targets(&mut value["components"]["schemas"]["ExplainResponse"]);
    let response = value["components"]["schemas"]["ExplainResponse"].clone();
    let target = value["components"]["schemas"]["TargetExplanation"].clone();
    let names: Vec<Value> = methods.names().into_iter().map(Value::from).collect();
    for method in methods.iter() {
        let (params_name, schemas) = method.params_schemas();
        for (name, schema) in schemas {
            value["components"]["schemas"][name] = serde_json::to_value(schema).unwrap_or_default();
        }
        let request_name = format!("ExplainRequest.{}", method.name());
        let mut body = request.clone();
        // Absent or null, the method's defaults (as the README's examples send it).
        body["properties"]["params"] = json!({
            "oneOf": [{ "$ref": format!("#/components/schemas/{params_name}") }, { "type": "null" }]
        });
        value["components"]["schemas"][&request_name] = body;
        let mut item = template.clone();
        let post = &mut item["post"];
        post["operationId"] = format!("explain_{}", method.name().replace('-', "_")).into();
        post["summary"] = method.summary().into();
        let caps = method.capabilities();
        post["description"] = format!(
            "{} Runs {} passes; explains {} models{}{}{}. Takes the predict input forms: JSON (below), a raw \
             image body with options and parameters in the query string, or multipart with `image` and a JSON \
             part `request`.",
            method.summary(),
            serde_json::to_value(caps.passes)
                .unwrap_or_default()
                .as_str()
                .unwrap_or(""),
            serde_json::to_value(caps.inputs)
                .unwrap_or_default()
                .as_str()
                .unwrap_or(""),
            if caps.layer { "; weighs a spatial `layer`" } else { "" },
            if caps.random { "; seeded" } else { "" },
            if caps.makes_image {
                "; answers an image it made (`details.image_png`), from noise without an input"
            } else {
                ""
            },
        )
        .into();
        if let Some(params) = post["parameters"].as_array_mut() {
            params.retain(|p| p["name"] != "method");
        }
        post["requestBody"]["content"]["application/json"]["schema"] =
            json!({ "$ref": format!("#/components/schemas/{request_name}") });
        if let Some((details_name, schemas)) = method.details_schemas() {
            for (name, schema) in schemas {
                value["components"]["schemas"][name] = serde_json::to_value(schema).unwrap_or_default();
            }
            let response_name = answer_with_details(&mut value, method.name(), &details_name, &response, &target);
            post["responses"]["200"]["content"]["application/json"]["schema"] =
                json!({ "$ref": format!("#/components/schemas/{response_name}") });
        }
        value["paths"][format!("/v1/models/{{model}}/explain/{}", method.name())] = item;
    }
    // Where a method is named in a body, only the served ones are valid.
    for schema in ["PredictExplain", "JobRequest"] {
        if value["components"]["schemas"][schema]["properties"]["method"].is_object() {
            value["components"]["schemas"][schema]["properties"]["method"]["enum"] = Value::Array(names.clone());
        }
    }
    place_bounds(&mut value, limits);
    audit_subject_header(&mut value);
    value
}

/// Every route whose answer may be audited takes `x-audit-subject`: whose data the record holds,
/// so the subject's erasure reaches it.
fn audit_subject_header(doc: &mut Value) {
    let Some(paths) = doc["paths"].as_object_mut() else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        let audited = path == "/v1/jobs"
            || (path.starts_with("/v1/models/")
                && (path.contains("/explain/") || path.ends_with("/predict") || path.ends_with("/uncertainty")));
        if !audited || !item["post"].is_object() {
            continue;
        }
        if !item["post"]["parameters"].is_array() {
            item["post"]["parameters"] = json!([]);
        }
        if let Some(params) = item["post"]["parameters"].as_array_mut() {
            params.push(subject_parameter());
        }
    }
}

fn subject_parameter() -> Value {
    json!({
        "name": super::auth::SUBJECT_HEADER,
        "in": "header",
        "required": false,
        "description": "Whose data this request holds (a customer reference): with `audit_encrypt`, the audit record's \
            inputs and maps are encrypted with this subject's key, which `DELETE /v1/audit/subjects/{subject}` destroys. \
            Absent: a key of the record's own. Not accepted on shared jobs.",
        "schema": {"type": "string", "minLength": 1, "maxLength": super::auth::MAX_SUBJECT_BYTES, "pattern": "^[!-~]+$"},
    })
}

/// Adds `ExplainResponse.{method}`, the answer whose targets' `details` are the method's
/// (`TargetExplanation.{method}`), and returns its name: so the document states, per explain path,
/// what that method's `details` hold.
fn answer_with_details(doc: &mut Value, method: &str, details: &str, response: &Value, target: &Value) -> String {
    let target_name = format!("TargetExplanation.{method}");
    let mut target = target.clone();
    let description = target["properties"]["details"]["description"].clone();
    target["properties"]["details"] = json!({
        "$ref": format!("#/components/schemas/{details}"),
        "description": description,
    });
    doc["components"]["schemas"][&target_name] = target;
    let mut response = response.clone();
    retarget(
        &mut response,
        "#/components/schemas/TargetExplanation",
        &format!("#/components/schemas/{target_name}"),
    );
    let response_name = format!("ExplainResponse.{method}");
    doc["components"]["schemas"][&response_name] = response;
    response_name
}

/// Points every `$ref` to `from` at `to`.
fn retarget(value: &mut Value, from: &str, to: &str) {
    match value {
        Value::Object(map) => {
            if map.get("$ref").and_then(Value::as_str) == Some(from) {
                map.insert("$ref".into(), to.into());
            }
            map.values_mut().for_each(|v| retarget(v, from, to));
        }
        Value::Array(items) => items.iter_mut().for_each(|v| retarget(v, from, to)),
        _ => {}
    }
}

/// A method's parameters as one self-contained JSON Schema, its `$ref`s inlined, with the bounds
/// the document states: the same schema as the document's, for a client (the page) that builds a
/// form from `GET /v1/models/{model}` without reading the document.
pub fn params_schema(method: &dyn AnyMethod, limits: Limits) -> Value {
    self_contained(method.params_schemas(), limits)
}

/// A method's answers' `details` as one self-contained JSON Schema (as the document's
/// `TargetExplanation.{method}` states it); `None` for methods whose answers carry no `details`.
pub fn details_schema(method: &dyn AnyMethod, limits: Limits) -> Option<Value> {
    method.details_schemas().map(|named| self_contained(named, limits))
}

/// A named schema with its `$ref`s inlined and its bounds in their standard keywords.
fn self_contained((name, schemas): NamedSchemas, limits: Limits) -> Value {
    let schemas: BTreeMap<String, Value> = schemas
        .into_iter()
        .map(|(n, s)| (n, serde_json::to_value(s).unwrap_or_default()))
        .collect();
    let mut schema = schemas.get(&name).cloned().unwrap_or_default();
    inline_refs(&mut schema, &schemas, 0);
    place_bounds(&mut schema, limits);
    schema
}

/// Most nested `$ref`s [`inline_refs`] follows: parameter schemas nest two deep; a cycle stops here.
const MAX_REF_DEPTH: usize = 8;

/// Replaces each `{"$ref": "#/components/schemas/X", ...}` with X's schema; the keywords beside
/// the `$ref` (the field's own default and description) win over X's.
fn inline_refs(value: &mut Value, schemas: &BTreeMap<String, Value>, depth: usize) {
    match value {
        Value::Object(map) => {
            let target = map
                .get("$ref")
                .and_then(Value::as_str)
                .and_then(|r| r.strip_prefix("#/components/schemas/"))
                .and_then(|n| schemas.get(n));
            match (target, depth < MAX_REF_DEPTH) {
                (Some(Value::Object(target)), true) => {
                    let mut inlined = target.clone();
                    map.remove("$ref");
                    inlined.append(map);
                    *value = Value::Object(inlined);
                    inline_refs(value, schemas, depth + 1);
                }
                _ => map.values_mut().for_each(|v| inline_refs(v, schemas, depth)),
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| inline_refs(v, schemas, depth)),
        _ => {}
    }
}

/// An explain answer holds one target's fields at its top level, or `explanations` with several:
/// utoipa writes the flattened `Option<TargetExplanation>` as `oneOf [TargetExplanation, null]`,
/// which an answer with several targets (an object without `target`) never matches.
fn one_or_several_targets(schema: &mut Value) {
    let Some(parts) = schema["allOf"].as_array_mut() else {
        return;
    };
    for part in parts.iter_mut() {
        if part["oneOf"][0]["$ref"] == "#/components/schemas/TargetExplanation" {
            *part = json!({ "anyOf": [
                { "$ref": "#/components/schemas/TargetExplanation" },
                { "required": ["explanations"] },
            ] });
        }
    }
}

/// Bounds that utoipa's literal `minimum` / `maximum` cannot name travel as extensions written from
/// the constants the code checks (`x-maximum = MAX_SIDE`), or as [`CONFIGURED_MAX_SAMPLES`] for the service's
/// `max_samples`: this puts each in its standard keyword, so the document states what is enforced.
fn place_bounds(value: &mut Value, limits: Limits) {
    const KEYWORDS: [&str; 4] = ["minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"];
    match value {
        Value::Object(map) => {
            for keyword in KEYWORDS {
                if let Some(bound) = map.remove(&format!("x-{keyword}")) {
                    let bound = match bound.as_str() {
                        Some(CONFIGURED_MAX_SAMPLES) => Value::from(limits.max_samples),
                        _ => bound,
                    };
                    map.insert(keyword.to_string(), bound);
                }
            }
            map.values_mut().for_each(|v| place_bounds(v, limits));
        }
        Value::Array(items) => items.iter_mut().for_each(|v| place_bounds(v, limits)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each method's parameters and answer `details`, as `GET /v1/models/{model}` gives them,
    /// stand alone: no `$ref` left, and every bound in its standard keyword; the document's answer
    /// on a method's path holds `details` to the method's schema.
    #[test]
    fn params_schemas_are_self_contained() {
        let limits = Limits {
            max_samples: 1234,
            max_targets: 10,
            max_job_bytes: 1 << 30,
            max_batch: 64,
        };
        for method in Methods::standard().iter() {
            let schema = params_schema(method.as_ref(), limits);
            let text = schema.to_string();
            assert_eq!(schema["type"], "object", "{}: {text}", method.name());
            assert!(
                !text.contains("$ref") && !text.contains("\"x-"),
                "{}: {text}",
                method.name()
            );
        }
        let methods = Methods::standard();
        let doc = document_value(&methods, limits);
        let mut declared = 0;
        for method in methods.iter() {
            let name = method.name();
            let path = format!("/v1/models/{{model}}/explain/{name}");
            let answer = &doc["paths"][&path]["post"]["responses"]["200"]["content"]["application/json"]["schema"];
            let Some(schema) = details_schema(method.as_ref(), limits) else {
                assert_eq!(answer["$ref"], "#/components/schemas/ExplainResponse", "{name}");
                continue;
            };
            declared += 1;
            let text = schema.to_string();
            assert_eq!(schema["type"], "object", "{name}: {text}");
            assert!(!text.contains("$ref") && !text.contains("\"x-"), "{name}: {text}");
            // The document's answer on the method's path holds its targets' `details` to it.
            let target = format!("TargetExplanation.{name}");
            assert_eq!(answer["$ref"], format!("#/components/schemas/ExplainResponse.{name}"));
            assert!(doc["components"]["schemas"][format!("ExplainResponse.{name}")]
                .to_string()
                .contains(&format!("#/components/schemas/{target}")));
            let (details, _) = method.details_schemas().unwrap();
            assert_eq!(
                doc["components"]["schemas"][&target]["properties"]["details"]["$ref"],
                format!("#/components/schemas/{details}"),
                "{name}"
            );
        }
        assert!(declared >= 11, "only {declared} methods declare their details");
        let ig = params_schema(methods.get("integrated-gradients").unwrap().as_ref(), limits);
        assert_eq!(ig["properties"]["baseline"]["default"], "black");
        assert!(ig["properties"]["baseline"]["enum"]
            .as_array()
            .is_some_and(|e| e.len() > 1));
        let rise = params_schema(methods.get("rise").unwrap().as_ref(), limits);
        assert_eq!(rise["properties"]["masks"]["oneOf"][0]["maximum"], 1234, "{rise}");
    }
}
