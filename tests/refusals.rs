//! The model report and the request path agree on differentiability: a model whose operators all
//! have rules but whose attributes some rules refuse is reported non-differentiable at load, with
//! every refused node listed beside the operators without a rule (found by running the same
//! rules a request's build runs), and a
//! gradient request is refused with the same reasons.

mod common;

use common::*;
use explaind::onnx::builder::{Attr, GraphBuilder};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// input [1, 1, 4, 4] -> Resize (the axes attribute) -> Resize (tf_crop_and_resize) -> Flatten ->
/// Sin -> Gemm: Resize has a rule, these two forms of it are refused; Sin has none.
fn refused_forms() -> explaind::onnx::proto::ModelProto {
    let mut g = GraphBuilder::new("refused", 18);
    let x = g.input("input", &[-1, 1, 4, 4]);
    let scales = g.constant("scales", &[2], &[2.0, 2.0]);
    g.node(
        "Resize",
        &[&x, "", &scales],
        vec![("axes", Attr::Ints(vec![2, 3])), ("mode", Attr::Str("linear".into()))],
    );
    let up = g.rename_last_output("upsampled");
    let roi = g.constant("roi", &[8], &[0.0, 0.0, 0.1, 0.1, 1.0, 1.0, 0.9, 0.9]);
    let half = g.constant("half", &[4], &[1.0, 1.0, 0.5, 0.5]);
    g.node(
        "Resize",
        &[&up, &roi, &half],
        vec![
            ("coordinate_transformation_mode", Attr::Str("tf_crop_and_resize".into())),
            ("mode", Attr::Str("nearest".into())),
        ],
    );
    g.rename_last_output("cropped");
    let flat = g.node("Flatten", &["cropped"], vec![("axis", Attr::Int(1))]);
    let flat = g.node("Sin", &[&flat], vec![]);
    let w: Vec<f32> = (0..32).map(|i| (i as f32 * 0.37).sin()).collect();
    let w = g.constant("w", &[16, 2], &w);
    g.node("Gemm", &[&flat, &w], vec![]);
    g.rename_last_output("logits");
    g.output("logits", &[-1, 2]);
    g.build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_lists_every_refused_node_and_requests_meet_the_same_refusal() {
    let dir = temp_dir("refusals-models");
    write_model(
        &dir,
        "refused",
        &refused_forms(),
        "task = \"image-classification\"\nlabels = [\"a\", \"b\"]\n[image]\ncolor = \"grayscale\"\n",
    );
    let s = start(test_config(&dir)).await;
    let report = ok_json(reqwest::get(url(&s, "/v1/models/refused")).await.unwrap()).await;
    let gradients = &report["gradients"];
    assert_eq!(gradients["differentiable"], false, "{report}");
    let blocking: Vec<String> = gradients["blocking_operators"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_str().unwrap().to_string())
        .collect();
    assert_eq!(blocking.len(), 3, "{blocking:?}");
    assert!(
        blocking.iter().any(|b| b.contains("no gradient rule for ai.onnx::Sin")),
        "{blocking:?}"
    );
    assert!(
        blocking
            .iter()
            .any(|b| b.contains("Resize_2") && b.contains("axes attribute")),
        "{blocking:?}"
    );
    assert!(
        blocking
            .iter()
            .any(|b| b.contains("Resize_4") && b.contains("tf_crop_and_resize")),
        "{blocking:?}"
    );
    // The request path says the same.
    let img = {
        let mut out = std::io::Cursor::new(Vec::new());
        image::GrayImage::from_pixel(4, 4, image::Luma([100]))
            .write_to(&mut out, image::ImageFormat::Png)
            .unwrap();
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, out.into_inner())
    };
    let body: Value = problem(
        post_json(&s, "/v1/models/refused/explain/saliency", &json!({"image": img})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "model-not-differentiable",
    )
    .await;
    let detail = body["detail"].as_str().unwrap();
    assert!(blocking.iter().all(|b| detail.contains(b.as_str())), "{detail}");
    // Forward methods still serve it.
    ok_json(post_json(&s, "/v1/models/refused/explain/occlusion", &json!({"image": img})).await).await;
    s.stop().await.unwrap();
}
