//! Black-box tests of the HTTP API: a real server on a loopback port, real ONNX Runtime, the bundled
//! example models (made by scripts/make_models.py) and their held-out samples.

use crate::common;

use std::io::Cursor;

use base64::Engine;
use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

fn fixture(path: &str) -> Vec<u8> {
    std::fs::read(root().join("tests/fixtures").join(path)).unwrap()
}

fn expected_fashion() -> Vec<Value> {
    let v: Value = serde_json::from_slice(&fixture("fashion/expected.json")).unwrap();
    v["cases"].as_array().unwrap().clone()
}

#[tokio::test]
async fn lists_models_with_hashes_and_interfaces() {
    let s = start_bundled().await;
    let http = reqwest::Client::new();
    let body: Value = http
        .get(url(&s, "/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = body["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    // `make efficientnet` may have added a third (not committed) model.
    assert!(
        names.starts_with(&["breast-cancer"]) && names.contains(&"fashion-cnn"),
        "{names:?}"
    );
    let fashion: Value = http
        .get(url(&s, "/v1/models/fashion-cnn"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let bytes = std::fs::read(root().join("models/fashion-cnn/model.onnx")).unwrap();
    use sha2::Digest;
    assert_eq!(fashion["sha256"], hex::encode(sha2::Sha256::digest(&bytes)));
    assert_eq!(fashion["task"], "image-classification");
    assert_eq!(fashion["image"]["width"], 28);
    assert_eq!(fashion["image"]["channels"], 1);
    assert_eq!(fashion["labels"][9], "Ankle boot");
    assert_eq!(fashion["onnx"]["inputs"][0]["name"], "input");
    assert_eq!(fashion["onnx"]["opsets"][0]["version"], 17);
    // What the service can do with each model, with default parameters.
    let has = |m: &Value, key: &str, name: &str| m[key].as_array().unwrap().iter().any(|v| v == name);
    assert!(has(&fashion, "methods", "grad-cam") && has(&fashion, "methods", "deeplift"));
    assert!(!has(&fashion, "methods", "tree-shap"), "no trees in a CNN");
    assert_eq!(fashion["uncertainty"], serde_json::json!(["mc-dropout", "tta"]));
    let forest = body["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "breast-cancer-forest")
        .unwrap();
    assert!(
        has(forest, "methods", "tree-shap") && !has(forest, "methods", "saliency"),
        "{forest}"
    );
    assert_eq!(
        forest["uncertainty"],
        serde_json::json!([]),
        "no layer to put a dropout mask before"
    );
    let missing = http.get(url(&s, "/v1/models/nope")).send().await.unwrap();
    problem(missing, StatusCode::NOT_FOUND, "model-not-found").await;
    s.stop().await.unwrap();
}

#[tokio::test]
async fn fashion_held_out_images_are_classified_as_onnx_runtime_does() {
    let s = start_bundled().await;
    let http = reqwest::Client::new();
    let mut correct = 0;
    let cases = expected_fashion();
    for case in &cases {
        let png = fixture(&format!("fashion/{}", case["file"].as_str().unwrap()));
        let resp = http
            .post(url(&s, "/v1/models/fashion-cnn/predict?top_k=3"))
            .header("content-type", "image/png")
            .body(png)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["predictions"].as_array().unwrap().len(), 3);
        // The service's preprocessing gives the same logits as the Python reference run.
        let got: Vec<f64> = serde_json::from_value(body["outputs"]["logits"].clone()).unwrap();
        let want: Vec<f64> = serde_json::from_value(case["logits"].clone()).unwrap();
        for (g, w) in got.iter().zip(&want) {
            assert!(
                (g - w).abs() < 1e-3,
                "{}: logits {got:?} vs reference {want:?}",
                case["file"]
            );
        }
        if body["predictions"][0]["index"] == case["label"] {
            correct += 1;
            assert_eq!(body["predictions"][0]["label"], case["label_name"]);
        }
    }
    assert!(correct >= 17, "only {correct}/{} held-out images right", cases.len());
    s.stop().await.unwrap();
}

#[tokio::test]
async fn every_image_input_form_gives_the_same_answer() {
    let s = start_bundled().await;
    let http = reqwest::Client::new();
    let png = fixture("fashion/test_00.png");
    let endpoint = url(&s, "/v1/models/fashion-cnn/predict");
    let top = |v: &Value| v["predictions"][0].clone();

    let raw: Value = http
        .post(&endpoint)
        .header("content-type", "image/png")
        .body(png.clone())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&png);
    let json_body: Value = http
        .post(&endpoint)
        .json(&json!({"image": b64}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let data_url: Value = http
        .post(&endpoint)
        .json(&json!({"image": format!("data:image/png;base64,{b64}")}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let form = reqwest::multipart::Form::new()
        .part(
            "image",
            reqwest::multipart::Part::bytes(png.clone())
                .file_name("x.png")
                .mime_str("image/png")
                .unwrap(),
        )
        .text("request", r#"{"top_k": 2}"#);
    let multipart: Value = http
        .post(&endpoint)
        .multipart(form)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(multipart["predictions"].as_array().unwrap().len(), 2);
    assert_eq!(top(&raw), top(&json_body));
    assert_eq!(top(&raw), top(&data_url));
    assert_eq!(top(&raw), top(&multipart));

    // JPEG of the same image, upscaled: still decoded, resized, and classified the same way.
    let img = image::load_from_memory(&png)
        .unwrap()
        .resize_exact(84, 84, image::imageops::FilterType::Triangle);
    let mut jpeg = Vec::new();
    img.to_rgb8()
        .write_to(&mut Cursor::new(&mut jpeg), image::ImageFormat::Jpeg)
        .unwrap();
    let resp = http
        .post(&endpoint)
        .header("content-type", "image/jpeg")
        .body(jpeg)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let jpeg_body: Value = resp.json().await.unwrap();
    assert_eq!(jpeg_body["predictions"][0]["index"], raw["predictions"][0]["index"]);

    // A batch gives each row the answer it gets alone.
    let other = base64::engine::general_purpose::STANDARD.encode(fixture("fashion/test_01.png"));
    let batch: Value = http
        .post(&endpoint)
        .json(&json!({"instances": [{"image": b64}, {"image": other}], "top_k": 1}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let rows = batch["instances"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["predictions"][0], raw["predictions"][0]);
    assert!(batch.get("predictions").is_none());
    s.stop().await.unwrap();
}

#[tokio::test]
async fn tabular_held_out_rows_by_name_and_by_order() {
    let s = start_bundled().await;
    let http = reqwest::Client::new();
    let holdout: Value = serde_json::from_slice(&fixture("breast_cancer_holdout.json")).unwrap();
    let names: Vec<String> = serde_json::from_value(holdout["feature_names"].clone()).unwrap();
    let cases = holdout["cases"].as_array().unwrap();
    let endpoint = url(&s, "/v1/models/breast-cancer/predict");
    let mut correct = 0;
    for (i, case) in cases.iter().enumerate() {
        let values: Vec<f64> = serde_json::from_value(case["features"].clone()).unwrap();
        let body = if i % 2 == 0 {
            json!({"features": values})
        } else {
            let named: serde_json::Map<String, Value> =
                names.iter().cloned().zip(values.iter().map(|v| json!(v))).collect();
            json!({"features": named})
        };
        let resp: Value = http
            .post(&endpoint)
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let got: Vec<f64> = serde_json::from_value(resp["outputs"]["logits"].clone()).unwrap();
        let want: Vec<f64> = serde_json::from_value(case["logits"].clone()).unwrap();
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-3, "row {i}: {got:?} vs {want:?}");
        }
        if resp["predictions"][0]["index"] == case["label"] {
            correct += 1;
        }
    }
    let accuracy = correct as f64 / cases.len() as f64;
    assert!(accuracy > 0.93, "held-out accuracy {accuracy}");
    s.stop().await.unwrap();
}

#[tokio::test]
async fn bad_requests_get_problem_details() {
    let mut config = test_config(&root().join("models"));
    config.max_body_bytes = 64 * 1024;
    config.max_image_pixels = 100 * 100;
    config.max_batch = 4;
    let s = start(config).await;
    let http = reqwest::Client::new();
    let image = url(&s, "/v1/models/fashion-cnn/predict");
    let tabular = url(&s, "/v1/models/breast-cancer/predict");

    let r = http
        .post(&image)
        .header("content-type", "application/json")
        .body("{\"image\": ")
        .send()
        .await
        .unwrap();
    problem(r, StatusCode::BAD_REQUEST, "malformed-json").await;

    let r = http
        .post(&image)
        .json(&json!({"image": "aGk=", "colour": 1}))
        .send()
        .await
        .unwrap();
    let body = problem(r, StatusCode::BAD_REQUEST, "invalid-request").await;
    assert!(body["detail"].as_str().unwrap().contains("colour"), "{body}");

    let r = http
        .post(&image)
        .header("content-type", "text/plain")
        .body("hello")
        .send()
        .await
        .unwrap();
    problem(r, StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported-media-type").await;

    let r = http
        .post(&image)
        .header("content-type", "image/png")
        .body(&b"\x89PNG\r\n\x1a\ngarbage"[..])
        .send()
        .await
        .unwrap();
    problem(r, StatusCode::BAD_REQUEST, "invalid-image").await;

    let r = http
        .post(&image)
        .json(&json!({"image": "not base64 !!"}))
        .send()
        .await
        .unwrap();
    problem(r, StatusCode::BAD_REQUEST, "invalid-image").await;

    let mut big = Vec::new();
    image::DynamicImage::new_luma8(200, 200)
        .write_to(&mut Cursor::new(&mut big), image::ImageFormat::Png)
        .unwrap();
    let r = http
        .post(&image)
        .header("content-type", "image/png")
        .body(big)
        .send()
        .await
        .unwrap();
    let body = problem(r, StatusCode::PAYLOAD_TOO_LARGE, "image-too-large").await;
    assert!(body["detail"].as_str().unwrap().contains("200x200"), "{body}");

    let r = http
        .post(&image)
        .header("content-type", "image/png")
        .body(vec![0u8; 100 * 1024])
        .send()
        .await
        .unwrap();
    problem(r, StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large").await;

    let r = http
        .post(&tabular)
        .json(&json!({"features": {"mean radius": 1.0, "colour": 2}}))
        .send()
        .await
        .unwrap();
    let body = problem(r, StatusCode::UNPROCESSABLE_ENTITY, "invalid-input").await;
    let detail = body["detail"].as_str().unwrap();
    assert!(
        detail.contains("unknown feature(s): colour") && detail.contains("missing feature(s): mean texture"),
        "{detail}"
    );

    let r = http
        .post(&tabular)
        .json(&json!({"features": [1.0, 2.0]}))
        .send()
        .await
        .unwrap();
    let body = problem(r, StatusCode::UNPROCESSABLE_ENTITY, "invalid-input").await;
    assert!(
        body["detail"].as_str().unwrap().contains("expected 30 feature values"),
        "{body}"
    );

    let r = http
        .post(&tabular)
        .json(&json!({"features": vec!["x"; 30]}))
        .send()
        .await
        .unwrap();
    problem(r, StatusCode::UNPROCESSABLE_ENTITY, "invalid-input").await;

    let png = fixture("fashion/test_00.png");
    let r = http
        .post(&tabular)
        .header("content-type", "image/png")
        .body(png.clone())
        .send()
        .await
        .unwrap();
    problem(r, StatusCode::UNPROCESSABLE_ENTITY, "invalid-input").await;

    let r = http
        .post(&image)
        .json(&json!({"features": [1.0]}))
        .send()
        .await
        .unwrap();
    problem(r, StatusCode::UNPROCESSABLE_ENTITY, "invalid-input").await;

    let r = http
        .post(format!("{image}?top_k=0"))
        .header("content-type", "image/png")
        .body(png.clone())
        .send()
        .await
        .unwrap();
    problem(r, StatusCode::BAD_REQUEST, "invalid-request").await;

    let r = http
        .post(format!("{image}?colour=1"))
        .header("content-type", "image/png")
        .body(png.clone())
        .send()
        .await
        .unwrap();
    problem(r, StatusCode::BAD_REQUEST, "invalid-request").await;

    let b64 = base64::engine::general_purpose::STANDARD.encode(&png);
    let r = http
        .post(&image)
        .json(&json!({"instances": vec![json!({"image": b64}); 5]}))
        .send()
        .await
        .unwrap();
    let body = problem(r, StatusCode::BAD_REQUEST, "invalid-request").await;
    assert!(body["detail"].as_str().unwrap().contains("at most 4"), "{body}");

    let r = http.post(&image).json(&json!({})).send().await.unwrap();
    problem(r, StatusCode::BAD_REQUEST, "invalid-request").await;

    let r = http
        .post(url(&s, "/v1/models/nope/predict"))
        .json(&json!({"features": [1]}))
        .send()
        .await
        .unwrap();
    problem(r, StatusCode::NOT_FOUND, "model-not-found").await;

    let r = http.get(url(&s, "/v2/whatever")).send().await.unwrap();
    problem(r, StatusCode::NOT_FOUND, "not-found").await;

    let r = http.get(&image).send().await.unwrap();
    problem(r, StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed").await;

    let form = reqwest::multipart::Form::new().text("colour", "red");
    let r = http.post(&image).multipart(form).send().await.unwrap();
    problem(r, StatusCode::BAD_REQUEST, "invalid-request").await;

    // Each problem type documents itself.
    let doc: Value = http
        .get(url(&s, "/problems/overloaded"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["status"], 503);

    // Nothing above hurt the service.
    let r = http
        .post(&image)
        .header("content-type", "image/png")
        .body(png)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    s.stop().await.unwrap();
}

#[tokio::test]
async fn request_ids_health_and_metrics() {
    let s = start_bundled().await;
    let http = reqwest::Client::new();
    let r = http
        .get(url(&s, "/healthz"))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["x-request-id"], "abc-123");
    let r = http.get(url(&s, "/readyz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        !r.headers()["x-request-id"].is_empty(),
        "a request id is generated when none is sent"
    );
    http.post(url(&s, "/v1/models/fashion-cnn/predict"))
        .header("content-type", "image/png")
        .body(fixture("fashion/test_00.png"))
        .send()
        .await
        .unwrap();
    let text = http
        .get(url(&s, "/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains(
            r#"explaind_http_requests_total{route="/v1/models/{model}/predict",method="POST",status="200"} 1"#
        ),
        "{text}"
    );
    for name in [
        "explaind_queue_depth",
        "explaind_job_duration_seconds_bucket",
        "explaind_jobs_rejected_total",
    ] {
        assert!(text.contains(name), "{name} missing from:\n{text}");
    }
    s.stop().await.unwrap();
}

#[tokio::test]
async fn served_openapi_matches_the_committed_document() {
    let s = start_bundled().await;
    let served: Value = reqwest::get(url(&s, "/openapi.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let committed: Value =
        serde_json::from_slice(&std::fs::read(root().join("openapi/openapi.json")).unwrap()).unwrap();
    assert!(
        served == committed,
        "openapi/openapi.json is stale: run `make openapi` (cargo run -- openapi > openapi/openapi.json) and commit it"
    );
    s.stop().await.unwrap();
}
