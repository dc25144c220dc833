//! Attention rollout on a vision transformer (explaind's zoo: 32x32 images in 8x8 patches, a class
//! token, two heads, three encoder layers) against scripts/rollout_reference.py, which reads the same attention maps
//! through ONNX Runtime's Python API and rolls them out with NumPy as jacobgil/vit-explain does;
//! every head fusion, with and without discarding. Chefer et al.'s transformer relevance against
//! scripts/chefer_reference.py, whose attention gradients are central differences through ONNX
//! Runtime. Models without self-attention are refused.

use crate::common;

use common::*;
use serde_json::json;

const MANIFEST: &str = "task = \"image-classification\"\nlabels = [\"a\", \"b\", \"c\"]\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attention_rollout_and_transformer_relevance_match_independent_computations() {
    let dir = temp_dir("attention-models");
    write_model(&dir, "vit", &explaind::onnx::zoo::vit(32, 8, (16, 2, 3), 3), MANIFEST);
    copy_bundled("fashion-cnn", &dir);
    let s = start(test_config(&dir)).await;
    let report = get_json(&s, "/v1/models/vit").await;
    let maps: Vec<String> = serde_json::from_value(report["gradients"]["attention_maps"].clone()).unwrap();
    assert_eq!(maps.len(), 3, "one per layer: {report}");
    assert!(report["methods"]
        .as_array()
        .unwrap()
        .contains(&json!("attention-rollout")));
    // A 32x32 image: no resizing, so the model's input is the pixels / 255.
    let mut rng = Rng::new(21);
    let pixels: Vec<u8> = (0..32 * 32 * 3).map(|_| rng.uniform(0.0, 255.0) as u8).collect();
    let img = image::RgbImage::from_raw(32, 32, pixels.clone()).unwrap();
    let mut png = std::io::Cursor::new(Vec::new());
    img.write_to(&mut png, image::ImageFormat::Png).unwrap();
    let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, png.into_inner());
    let mut input = vec![0f32; 3 * 32 * 32];
    for (i, p) in pixels.iter().enumerate() {
        let (pixel, channel) = (i / 3, i % 3);
        input[channel * 32 * 32 + pixel] = *p as f32 / 255.0;
    }
    let model_file = dir.join("vit/model.onnx");
    for (fusion, discard) in [("mean", 0.0), ("max", 0.0), ("min", 0.5), ("mean", 0.3)] {
        let v = ok_json(
            post_json(
                &s,
                "/v1/models/vit/explain/attention-rollout",
                &json!({"image": b64, "params": {"head_fusion": fusion, "discard_ratio": discard}}),
            )
            .await,
        )
        .await;
        assert_eq!(attribution_values(&v).len(), 32 * 32);
        assert_eq!(v["details"]["grid"], json!([4, 4]), "{}", v["details"]);
        assert_eq!(v["stats"]["model_rows"], 1, "one forward pass");
        let ours: Vec<f64> = serde_json::from_value(v["details"]["patches"].clone()).unwrap();
        let theirs = attention_reference(
            "rollout_reference.py",
            &json!({"model": model_file, "input": input, "shape": [1, 3, 32, 32], "maps": maps,
                   "head_fusion": fusion, "discard_ratio": discard, "skip": 1, "grid": [4, 4]}),
        );
        assert_eq!(ours.len(), 16);
        assert!(
            ours.iter().any(|v| (*v - 1.0).abs() < 1e-9),
            "{fusion}/{discard}: no peak of 1: {ours:?}"
        );
        for (a, b) in ours.iter().zip(&theirs) {
            assert!((a - b).abs() < 1e-5, "{fusion}/{discard}: {ours:?} vs {theirs:?}");
        }
    }
    // Chefer et al.'s relevance for each class, against central differences of the logit with
    // respect to every attention probability (scripts/chefer_reference.py).
    for target in 0..3 {
        let v = ok_json(
            post_json(
                &s,
                "/v1/models/vit/explain/transformer-relevance",
                &json!({"image": b64, "target": target}),
            )
            .await,
        )
        .await;
        assert_eq!(attribution_values(&v).len(), 32 * 32);
        let ours: Vec<f64> = serde_json::from_value(v["details"]["patches"].clone()).unwrap();
        let theirs = attention_reference(
            "chefer_reference.py",
            &json!({"model": model_file, "input": input, "shape": [1, 3, 32, 32], "maps": maps,
                   "target": target, "skip": 1, "eps": 1e-2}),
        );
        assert_eq!(ours.len(), 16);
        let worst = ours
            .iter()
            .zip(&theirs)
            .map(|(a, b)| (a - b).abs())
            .fold(0f64, f64::max);
        eprintln!("class {target}: largest difference {worst:.2e} (values in [0, 1])");
        assert!(worst < 2e-3, "class {target}: {ours:?} vs {theirs:?}");
    }
    // A CNN has no self-attention: refused, saying why.
    let r = post_json(
        &s,
        "/v1/models/fashion-cnn/explain/attention-rollout",
        &json!({"image": b64}),
    )
    .await;
    let p = problem(r, reqwest::StatusCode::UNPROCESSABLE_ENTITY, "unsupported-model").await;
    assert!(p["detail"].as_str().unwrap().contains("attention"), "{p}");
    s.stop().await.unwrap();
}
