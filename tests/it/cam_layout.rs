//! CAM layers on channels-last graphs (issue 19): converted TensorFlow and Caffe graphs transpose
//! to NHWC after every convolution, so their block outputs hold channels on axis 3. Two models
//! built here compute the same function, one keeping its feature map channels-first, the other
//! transposing it to channels-last before the ReLU and pooling it over axes 1 and 2 as tf2onnx
//! exports do: the report gives each candidate its channel axis, the default layer is the feature
//! map before global pooling in both, and Grad-CAM, Grad-CAM++ and Score-CAM answer the same maps.
//! A CAM's memory is its layer's size: a wide layer at a small spatial size (ResNet-50's 2048
//! channels at 7x7) is not charged as if each channel were the input's size.

use crate::common;

use common::*;
use explaind::onnx::builder::{Attr, GraphBuilder};
use explaind::onnx::proto::ModelProto;
use serde_json::json;

const SIZE: i64 = 12;
const CHANNELS: i64 = 4;

/// The methods that weigh a layer (`capabilities.layer`) and explain `model`, as its page lists
/// them: every CAM, present and future, is held to the layout checks below.
async fn cam_methods(s: &explaind::Service, model: &str) -> Vec<String> {
    let report = get_json(s, &format!("/v1/models/{model}")).await;
    let methods: Vec<String> = report["method_details"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["capabilities"]["layer"] == true)
        .map(|m| m["name"].as_str().unwrap().to_string())
        .collect::<Vec<_>>();
    assert!(methods.len() >= 3, "{model}: CAM methods {methods:?}");
    methods
}

/// input [N, 3, 12, 12] -> Conv (4 channels, 3x3, pad 1) -> [Transpose to NHWC] -> Relu `feature`
/// -> global mean over the spatial axes -> Gemm -> logits [N, 3].
fn model(channels_last: bool) -> ModelProto {
    let mut rng = Rng::new(3);
    let mut g = GraphBuilder::new(if channels_last { "nhwc" } else { "nchw" }, 17);
    let x = g.input("input", &[-1, 3, SIZE, SIZE]);
    let w: Vec<f32> = (0..CHANNELS * 3 * 9).map(|_| rng.uniform(-0.5, 0.5)).collect();
    let w = g.constant("conv_w", &[CHANNELS, 3, 3, 3], &w);
    let b: Vec<f32> = (0..CHANNELS).map(|_| rng.uniform(-0.1, 0.1)).collect();
    let b = g.constant("conv_b", &[CHANNELS], &b);
    let conv = g.node("Conv", &[&x, &w, &b], vec![("pads", Attr::Ints(vec![1, 1, 1, 1]))]);
    let pre = if channels_last {
        g.node("Transpose", &[&conv], vec![("perm", Attr::Ints(vec![0, 2, 3, 1]))])
    } else {
        conv
    };
    g.node("Relu", &[&pre], vec![]);
    let feature = g.rename_last_output("feature");
    let axes = if channels_last { [1, 2] } else { [2, 3] };
    let pooled = g.node(
        "ReduceMean",
        &[&feature],
        vec![("axes", Attr::Ints(axes.to_vec())), ("keepdims", Attr::Int(0))],
    );
    let dense: Vec<f32> = (0..CHANNELS * 3).map(|_| rng.uniform(-1.0, 1.0)).collect();
    let dense = g.constant("dense_w", &[CHANNELS, 3], &dense);
    g.node("Gemm", &[&pooled, &dense], vec![]);
    g.rename_last_output("logits");
    g.output("logits", &[-1, 3]);
    g.build()
}

/// input [N, 3, 64, 64] -> Conv 1x1 (256 channels) -> Relu -> MaxPool 32x32 `feature` [N, 256, 2, 2]
/// -> global mean -> Gemm -> logits [N, 3].
fn wide_model() -> ModelProto {
    let mut rng = Rng::new(5);
    let mut g = GraphBuilder::new("wide", 17);
    let x = g.input("input", &[-1, 3, 64, 64]);
    let w: Vec<f32> = (0..256 * 3).map(|_| rng.uniform(-0.5, 0.5)).collect();
    let w = g.constant("conv_w", &[256, 3, 1, 1], &w);
    let conv = g.node("Conv", &[&x, &w], vec![]);
    let relu = g.node("Relu", &[&conv], vec![]);
    g.node(
        "MaxPool",
        &[&relu],
        vec![
            ("kernel_shape", Attr::Ints(vec![32, 32])),
            ("strides", Attr::Ints(vec![32, 32])),
        ],
    );
    let feature = g.rename_last_output("feature");
    let pooled = g.node(
        "ReduceMean",
        &[&feature],
        vec![("axes", Attr::Ints(vec![2, 3])), ("keepdims", Attr::Int(0))],
    );
    let dense: Vec<f32> = (0..256 * 3).map(|_| rng.uniform(-1.0, 1.0)).collect();
    let dense = g.constant("dense_w", &[256, 3], &dense);
    g.node("Gemm", &[&pooled, &dense], vec![]);
    g.rename_last_output("logits");
    g.output("logits", &[-1, 3]);
    g.build()
}

const MANIFEST: &str = "task = \"image-classification\"\nlabels = [\"a\", \"b\", \"c\"]\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cams_pool_over_the_channel_axis_of_channels_last_layers() {
    let dir = temp_dir("cam-layout-models");
    write_model(&dir, "nchw", &model(false), MANIFEST);
    write_model(&dir, "nhwc", &model(true), MANIFEST);
    let s = start(test_config(&dir)).await;
    for (name, axis) in [("nchw", 1), ("nhwc", 3)] {
        let report = get_json(&s, &format!("/v1/models/{name}")).await;
        let g = &report["gradients"];
        assert_eq!(g["default_cam_layer"], "feature", "{name}: {g}");
        assert_eq!(g["cam_layer_channel_axis"]["feature"], axis, "{name}: {g}");
    }
    let mut rng = Rng::new(9);
    let noise = image::RgbImage::from_fn(SIZE as u32, SIZE as u32, |_, _| {
        image::Rgb([0, 0, 0].map(|_: u8| rng.uniform(0.0, 255.0) as u8))
    });
    let mut png = std::io::Cursor::new(Vec::new());
    noise.write_to(&mut png, image::ImageFormat::Png).unwrap();
    let image = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, png.into_inner());
    for method in cam_methods(&s, "nchw").await {
        let mut maps = Vec::new();
        for name in ["nchw", "nhwc"] {
            let v = ok_json(
                post_json(
                    &s,
                    &format!("/v1/models/{name}/explain/{method}"),
                    &json!({"image": image, "target": 1}),
                )
                .await,
            )
            .await;
            assert_eq!(v["layer"], "feature", "{name} {method}");
            maps.push(attribution_values(&v));
        }
        let scale = maps[0].iter().fold(0f64, |m, v| m.max(v.abs()));
        assert!(scale > 0.0, "{method}: an empty map");
        for (a, b) in maps[0].iter().zip(&maps[1]) {
            assert!((a - b).abs() <= 1e-5 * scale, "{method}: NCHW {a} vs NHWC {b}");
        }
    }
    s.stop().await.unwrap();
}

/// Charged at a channel per input pixel, this layer would be 256 x 64 x 64 x 8 bytes = 8 MiB and
/// refused under a 6 MiB budget; its real size (256 x 2 x 2) is served (Score-CAM's batch of 64
/// masked inputs is most of its 4 MiB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cam_is_charged_for_its_layer_not_for_the_input_size() {
    let dir = temp_dir("cam-wide-models");
    write_model(&dir, "wide", &wide_model(), MANIFEST);
    let config = explaind::config::Config {
        max_job_bytes: 6 << 20,
        ..test_config(&dir)
    };
    let s = start(config).await;
    let mut png = std::io::Cursor::new(Vec::new());
    image::RgbImage::from_fn(64, 64, |x, y| image::Rgb([(x * 4) as u8, (y * 4) as u8, 128]))
        .write_to(&mut png, image::ImageFormat::Png)
        .unwrap();
    let image = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, png.into_inner());
    for method in cam_methods(&s, "wide").await {
        let v = ok_json(
            post_json(
                &s,
                &format!("/v1/models/wide/explain/{method}"),
                &json!({"image": image}),
            )
            .await,
        )
        .await;
        assert_eq!(v["layer"], "feature", "{method}");
        assert_eq!(attribution_values(&v).len(), 64 * 64, "{method}");
    }
    s.stop().await.unwrap();
}

/// A vision transformer (explaind's zoo: 32x32 images in 8x8 patches, 16 patch tokens and a class
/// token, width 16) with its learned positions set to zero, so the token sequence its attention
/// reads is exactly the patch embedding's Conv output, flattened row by row behind the class token.
fn vit_without_positions() -> ModelProto {
    let mut model = explaind::onnx::zoo::vit(32, 8, (16, 2, 1), 3);
    let graph = model.graph.as_mut().unwrap();
    let tokens = graph
        .node
        .iter()
        .rfind(|n| n.op_type.as_deref() == Some("Concat"))
        .unwrap()
        .output[0]
        .clone();
    let positions = graph
        .node
        .iter()
        .find(|n| n.op_type.as_deref() == Some("Add") && n.input[0] == tokens)
        .unwrap()
        .input[1]
        .clone();
    let init = graph
        .initializer
        .iter_mut()
        .find(|t| t.name.as_deref() == Some(positions.as_str()))
        .unwrap();
    let count = init.dims.iter().product::<i64>() as usize;
    init.raw_data = None;
    init.float_data = vec![0.0; count];
    model
}

/// Grad-CAM on a ViT (issue 16): the default layer is the token sequence the last attention reads,
/// its patch tokens laid on the 4x4 grid (class token left out, as pytorch-grad-cam's
/// reshape_transform does). With zero positions that sequence is a permutation of the patch
/// embedding's NCHW Conv output, so every CAM on it must equal the same CAM on the Conv output,
/// computed through the channels-first path: the token layout is checked against an independent one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cams_of_a_vision_transformer_read_its_patch_tokens_on_their_grid() {
    let dir = temp_dir("cam-vit-models");
    write_model(&dir, "vit", &vit_without_positions(), MANIFEST);
    let s = start(test_config(&dir)).await;
    let report = get_json(&s, "/v1/models/vit").await;
    let g = &report["gradients"];
    let tokens = g["default_cam_layer"].as_str().unwrap().to_string();
    assert_eq!(g["cam_layer_channel_axis"][&tokens], 2, "{g}");
    assert_eq!(
        g["cam_layer_tokens"][&tokens],
        json!({"skip": 1, "height": 4, "width": 4}),
        "{g}"
    );
    let conv = g["cam_layers"][0].as_str().unwrap().to_string();
    assert_eq!(
        g["cam_layer_channel_axis"][&conv], 1,
        "the patch embedding is a CAM layer too: {g}"
    );
    let mut rng = Rng::new(11);
    let noise = image::RgbImage::from_fn(32, 32, |_, _| {
        image::Rgb([0, 0, 0].map(|_: u8| rng.uniform(0.0, 255.0) as u8))
    });
    let mut png = std::io::Cursor::new(Vec::new());
    noise.write_to(&mut png, image::ImageFormat::Png).unwrap();
    let image = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, png.into_inner());
    for method in cam_methods(&s, "vit").await {
        // Over the three classes (a CAM is ReLU'd: one class may leave it empty on random weights).
        let mut largest = 0f64;
        for target in 0..3 {
            let mut maps = Vec::new();
            for layer in [None, Some(conv.as_str())] {
                let mut body = json!({"image": image, "target": target});
                if let Some(l) = layer {
                    body["params"] = json!({"layer": l});
                }
                let v = ok_json(post_json(&s, &format!("/v1/models/vit/explain/{method}"), &body).await).await;
                assert_eq!(v["layer"], layer.unwrap_or(&tokens), "{method}");
                let map = attribution_values(&v);
                assert_eq!(map.len(), 32 * 32, "{method}");
                maps.push(map);
            }
            let scale = maps[0].iter().fold(0f64, |m, v| m.max(v.abs()));
            largest = largest.max(scale);
            for (a, b) in maps[0].iter().zip(&maps[1]) {
                assert!(
                    (a - b).abs() <= 1e-4 * scale.max(1e-12),
                    "{method}, class {target}: tokens {a} vs conv {b}"
                );
            }
        }
        assert!(largest > 0.0, "{method}: every map empty");
    }
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_cam_layer_of_a_convnext_is_its_last_stage_before_pooling() {
    // torchvision's ConvNeXt normalises the pooled 1x1 map channels-last before its classifier:
    // that LayerNormalization is no CAM layer; the last block's output, before global pooling, is.
    let model = explaind::onnx::zoo::convnext(&[8, 16], 32, 3);
    let graph = model.graph.as_ref().unwrap();
    let before_pooling = graph
        .node
        .iter()
        .find(|n| n.op_type.as_deref() == Some("GlobalAveragePool"))
        .unwrap()
        .input[0]
        .clone();
    let dir = temp_dir("convnext");
    write_model(
        &dir,
        "convnext",
        &model,
        "task = \"image-classification\"\nlabels = [\"a\", \"b\", \"c\"]\n",
    );
    let s = start(test_config(&dir)).await;
    let report = get_json(&s, "/v1/models/convnext").await;
    assert_eq!(
        report["gradients"]["default_cam_layer"],
        json!(before_pooling),
        "{}",
        report["gradients"]
    );
    assert_eq!(report["gradients"]["cam_layer_channel_axis"][&before_pooling], 1);
    let mut rng = Rng::new(8);
    let pixels: Vec<u8> = (0..32 * 32 * 3).map(|_| rng.uniform(0.0, 255.0) as u8).collect();
    let img = image::RgbImage::from_raw(32, 32, pixels).unwrap();
    let mut png = std::io::Cursor::new(Vec::new());
    img.write_to(&mut png, image::ImageFormat::Png).unwrap();
    let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, png.into_inner());
    let v = ok_json(post_json(&s, "/v1/models/convnext/explain/grad-cam", &json!({"image": b64})).await).await;
    assert_eq!(v["layer"], json!(before_pooling));
    let map = attribution_values(&v);
    assert_eq!(map.len(), 32 * 32);
    assert!(map.iter().any(|v| *v > 0.0), "a map with something in it");
}
