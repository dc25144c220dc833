//! Text models end to end: a real server on loopback, the zoo's text models cut at their word
//! embedding, tokenized by a real WordPiece tokenizer.

mod common;

use common::*;
use serde_json::{json, Value};

async fn text_service() -> explaind::Service {
    let dir = temp_dir("text-models");
    write_text_models(&dir);
    start(test_config(&dir)).await
}

async fn post(service: &explaind::Service, path: &str, body: Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(url(service, path))
        .json(&body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn predicts_and_explains_text() {
    let service = text_service().await;
    let r = post(
        &service,
        "/v1/models/keywords/predict",
        json!({"text": "The movie was great, but the ending was bad!"}),
    )
    .await;
    let status = r.status();
    let body: Value = r.json().await.unwrap();
    println!("{status} {body:#}");
    for method in [
        "saliency",
        "gradient-x-input",
        "smoothgrad",
        "integrated-gradients",
        "occlusion",
        "lime",
        "kernel-shap",
        "attention-rollout",
        "grad-cam",
    ] {
        let r = post(
            &service,
            &format!("/v1/models/keywords/explain/{method}"),
            json!({"text": "The movie was great, but the ending was bad!", "target": "positive", "include": ["words"]}),
        )
        .await;
        let status = r.status();
        let body: Value = r.json().await.unwrap();
        println!("{method} {status} {} {}", body["words"], body["detail"]);
    }
}
