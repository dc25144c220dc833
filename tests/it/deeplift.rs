//! DeepLIFT and DeepLiftShap on a real server: the rescale rule against its closed form on a
//! one-hidden-layer network, completeness (attributions sum to f(x) - f(x')) through every rescaled
//! nonlinearity and through max pooling (the bundled CNN), Captum's max pooling rule computed by
//! hand where the black reference ties every window, DeepLiftShap's seeded references and
//! averaged completeness.

use crate::common;

use base64::Engine;
use common::*;
use explaind::onnx::builder::{Attr, GraphBuilder};
use reqwest::StatusCode;
use serde_json::{json, Value};

const W1: [[f32; 4]; 3] = [[0.5, -1.0, 0.3, 2.0], [1.5, 0.2, -0.7, 0.1], [-0.4, 0.8, 1.1, -1.3]];
const B1: [f32; 4] = [0.1, -0.2, 0.05, 0.3];
const W2: [[f32; 2]; 4] = [[1.0, -0.5], [0.7, 0.2], [-1.2, 0.9], [0.4, 1.6]];

/// logits = tanh(x W1 + b1) W2.
fn tanh_mlp() -> explaind::onnx::proto::ModelProto {
    let mut g = GraphBuilder::new("mlp", 17);
    let x = g.input("input", &[-1, 3]);
    let w1: Vec<f32> = W1.iter().flatten().copied().collect();
    let w1 = g.constant("w1", &[3, 4], &w1);
    let b1 = g.constant("b1", &[4], &B1);
    let w2: Vec<f32> = W2.iter().flatten().copied().collect();
    let w2 = g.constant("w2", &[4, 2], &w2);
    let z = g.node("MatMul", &[&x, &w1], vec![]);
    let z = g.node("Add", &[&z, &b1], vec![]);
    let h = g.node("Tanh", &[&z], vec![]);
    g.node("MatMul", &[&h, &w2], vec![]);
    g.rename_last_output("logits");
    g.output("logits", &[-1, 2]);
    g.build()
}

/// A small image network through every rescaled nonlinearity: Conv, Tanh, Conv, Softplus, Conv,
/// LeakyRelu, Conv, Elu, Sigmoid, GlobalAveragePool, Gemm.
fn chain() -> explaind::onnx::proto::ModelProto {
    let mut g = GraphBuilder::new("chain", 17);
    let x = g.input("input", &[-1, 1, 6, 6]);
    let mut rng = Rng::new(12);
    let mut t = x;
    for (i, act) in ["Tanh", "Softplus", "LeakyRelu", "Elu"].iter().enumerate() {
        let cin = if i == 0 { 1 } else { 3 };
        let w: Vec<f32> = (0..3 * cin * 9).map(|_| rng.uniform(-0.8, 0.8)).collect();
        let w = g.constant(&format!("w{i}"), &[3, cin, 3, 3], &w);
        let c = g.node("Conv", &[&t, &w], vec![("pads", Attr::Ints(vec![1, 1, 1, 1]))]);
        t = g.node(act, &[&c], vec![]);
    }
    let s = g.node("Sigmoid", &[&t], vec![]);
    let gap = g.node("GlobalAveragePool", &[&s], vec![]);
    let flat = g.node("Flatten", &[&gap], vec![("axis", Attr::Int(1))]);
    let fc = g.constant("fc", &[3, 2], &[2.0, -1.0, -1.5, 1.0, 0.5, 2.5]);
    g.node("Gemm", &[&flat, &fc], vec![]);
    g.rename_last_output("logits");
    g.output("logits", &[-1, 2]);
    g.build()
}

/// Conv 3x3 (3 channels, bias, no padding) -> Relu -> MaxPool -> Flatten -> Gemm on an 8x8 grayscale
/// image. The black reference's feature maps are the constant relu(bias) per channel, so every one
/// of its pooling windows ties.
struct PooledCnn {
    kernel: usize,
    stride: usize,
    conv: Vec<f32>,
    fc: Vec<f32>,
}

const CNN_BIAS: [f32; 3] = [0.3, -0.2, 0.1];
const CNN_SIDE: usize = 8;
/// The feature maps' side (a 3x3 convolution without padding).
const MAP_SIDE: usize = CNN_SIDE - 2;

impl PooledCnn {
    fn new(kernel: usize, stride: usize) -> Self {
        let mut rng = Rng::new(21);
        let conv = rng.vec(3 * 9, -1.0, 1.0);
        let fc = rng.vec(3 * Self::pooled_side(kernel, stride).pow(2) * 2, -1.0, 1.0);
        PooledCnn {
            kernel,
            stride,
            conv,
            fc,
        }
    }

    fn pooled_side(kernel: usize, stride: usize) -> usize {
        (MAP_SIDE - kernel) / stride + 1
    }

    fn model(&self) -> explaind::onnx::proto::ModelProto {
        let mut g = GraphBuilder::new("pooled", 17);
        let x = g.input("input", &[-1, 1, CNN_SIDE as i64, CNN_SIDE as i64]);
        let w = g.constant("w", &[3, 1, 3, 3], &self.conv);
        let b = g.constant("b", &[3], &CNN_BIAS);
        let c = g.node("Conv", &[&x, &w, &b], vec![]);
        let r = g.node("Relu", &[&c], vec![]);
        let (k, s) = (self.kernel as i64, self.stride as i64);
        let p = g.node(
            "MaxPool",
            &[&r],
            vec![
                ("kernel_shape", Attr::Ints(vec![k, k])),
                ("strides", Attr::Ints(vec![s, s])),
            ],
        );
        let flat = g.node("Flatten", &[&p], vec![("axis", Attr::Int(1))]);
        let fc = g.constant("fc", &[(self.fc.len() / 2) as i64, 2], &self.fc);
        g.node("Gemm", &[&flat, &fc], vec![]);
        g.rename_last_output("logits");
        g.output("logits", &[-1, 2]);
        g.build()
    }

    /// The pre-activations [channel][row][column] for an 8x8 input.
    fn conv(&self, x: &[f64]) -> Vec<f64> {
        let mut z = vec![0f64; 3 * MAP_SIDE * MAP_SIDE];
        for c in 0..3 {
            for i in 0..MAP_SIDE {
                for j in 0..MAP_SIDE {
                    let mut sum = f64::from(CNN_BIAS[c]);
                    for u in 0..3 {
                        for v in 0..3 {
                            sum += f64::from(self.conv[c * 9 + u * 3 + v]) * x[(i + u) * CNN_SIDE + j + v];
                        }
                    }
                    z[(c * MAP_SIDE + i) * MAP_SIDE + j] = sum;
                }
            }
        }
        z
    }

    /// Captum's DeepLIFT contributions for `target`, by hand: the Gemm's weights are the pooled
    /// outputs' multipliers; per window, PyTorch's max index (the first maximum in row-major order)
    /// of the input and of the reference, the input's index taking g (m - y') and the reference's
    /// g (y - m) with m = max(y, y'), their sum divided by (a - a') (the plain gradient, g at the
    /// input's index, where |a - a'| <= 1e-10); ReLU's rescale multiplier; the convolution's
    /// transpose. Overlapping windows that share a maximum add their shares (Captum's unpooling
    /// writes one of them; adding keeps completeness).
    fn deeplift(&self, x: &[f64], r: &[f64], target: usize) -> Vec<f64> {
        const EPS: f64 = 1e-10;
        let (z, z0) = (self.conv(x), self.conv(r));
        let (a, a0): (Vec<f64>, Vec<f64>) = (
            z.iter().map(|v| v.max(0.0)).collect(),
            z0.iter().map(|v| v.max(0.0)).collect(),
        );
        let side = Self::pooled_side(self.kernel, self.stride);
        let first_max = |maps: &[f64], c: usize, oi: usize, oj: usize| {
            let mut best = (f64::NEG_INFINITY, 0);
            for u in 0..self.kernel {
                for v in 0..self.kernel {
                    let p = (c * MAP_SIDE + oi * self.stride + u) * MAP_SIDE + oj * self.stride + v;
                    if maps[p] > best.0 {
                        best = (maps[p], p);
                    }
                }
            }
            best
        };
        let (mut total, mut plain) = (vec![0f64; a.len()], vec![0f64; a.len()]);
        for c in 0..3 {
            for oi in 0..side {
                for oj in 0..side {
                    let g = f64::from(self.fc[((c * side + oi) * side + oj) * 2 + target]);
                    let ((y, p), (y0, p0)) = (first_max(&a, c, oi, oj), first_max(&a0, c, oi, oj));
                    let m = y.max(y0);
                    total[p] += g * (m - y0);
                    total[p0] += g * (y - m);
                    plain[p] += g;
                }
            }
        }
        let mut mz = vec![0f64; a.len()];
        for p in 0..a.len() {
            let da = a[p] - a0[p];
            let ma = if da.abs() > EPS { total[p] / da } else { plain[p] };
            let dz = z[p] - z0[p];
            let relu = if dz.abs() > EPS {
                da / dz
            } else {
                f64::from(u8::from(z[p] > 0.0))
            };
            mz[p] = ma * relu;
        }
        let mut out = vec![0f64; x.len()];
        for c in 0..3 {
            for i in 0..MAP_SIDE {
                for j in 0..MAP_SIDE {
                    for u in 0..3 {
                        for v in 0..3 {
                            out[(i + u) * CNN_SIDE + j + v] +=
                                mz[(c * MAP_SIDE + i) * MAP_SIDE + j] * f64::from(self.conv[c * 9 + u * 3 + v]);
                        }
                    }
                }
            }
        }
        out.iter().zip(x.iter().zip(r)).map(|(m, (x, r))| m * (x - r)).collect()
    }
}

const CNN_MANIFEST: &str = "task = \"image-classification\"\nlabels = [\"a\", \"b\"]\n[image]\ncolor = \"grayscale\"\n";

async fn start_models() -> explaind::Service {
    let dir = temp_dir("deeplift-models");
    write_model(
        &dir,
        "mlp",
        &tanh_mlp(),
        "task = \"tabular-classification\"\nlabels = [\"a\", \"b\"]\n[tabular]\nfeatures = [\"f0\", \"f1\", \"f2\"]\nbackground = \"background.csv\"\n",
    );
    std::fs::write(
        dir.join("mlp/background.csv"),
        "f0,f1,f2\n0.1,0.2,0.3\n-1,0.5,2\n1,1,-1\n0,-2,0.5\n",
    )
    .unwrap();
    write_model(
        &dir,
        "chain",
        &chain(),
        "task = \"image-classification\"\nlabels = [\"a\", \"b\"]\n[image]\ncolor = \"grayscale\"\n",
    );
    common::copy_bundled("fashion-cnn", &dir);
    // Non-overlapping 2x2 tiles, and overlapping 3x3 windows at stride 2.
    write_model(&dir, "tiles", &PooledCnn::new(2, 2).model(), CNN_MANIFEST);
    write_model(&dir, "overlap", &PooledCnn::new(3, 2).model(), CNN_MANIFEST);
    start(test_config(&dir)).await
}

async fn explain(s: &explaind::Service, model: &str, method: &str, body: Value) -> Value {
    ok_json(post_json(s, &format!("/v1/models/{model}/explain/{method}"), &body).await).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rescale_rule_equals_its_closed_form_on_a_tanh_network() {
    let s = start_models().await;
    let x = [0.9f64, -0.4, 1.7];
    // Reference: zeros (`black` on a tabular model).
    for target in [0usize, 1] {
        let v = explain(&s, "mlp", "deeplift", json!({"features": x, "target": target})).await;
        // Hidden unit j: z_j = x W1 + b1 against z'_j = b1; multiplier (tanh z - tanh z') / (z - z').
        let mut expected = [0f64; 3];
        for j in 0..4 {
            let z: f64 = (0..3).map(|i| x[i] * W1[i][j] as f64).sum::<f64>() + B1[j] as f64;
            let z0 = B1[j] as f64;
            let m = (z.tanh() - z0.tanh()) / (z - z0);
            for i in 0..3 {
                expected[i] += W2[j][target] as f64 * m * W1[i][j] as f64 * x[i];
            }
        }
        let got = attribution_values(&v);
        for i in 0..3 {
            assert!(
                (got[i] - expected[i]).abs() < 1e-5,
                "target {target} feature {i}: {} vs {}",
                got[i],
                expected[i]
            );
        }
        assert!(v["convergence_delta"].as_f64().unwrap().abs() < 1e-5, "{v}");
        // The multipliers alone.
        let m = explain(
            &s,
            "mlp",
            "deeplift",
            json!({"features": x, "target": target, "params": {"multiply_by_inputs": false}}),
        )
        .await;
        for (i, (a, mult)) in got.iter().zip(attribution_values(&m)).enumerate() {
            assert!((a - mult * x[i]).abs() < 1e-5);
        }
    }
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attributions_sum_to_the_score_difference_through_every_rescaled_nonlinearity() {
    let s = start_models().await;
    let mut rng = Rng::new(5);
    let pixels: Vec<u8> = (0..36).map(|_| rng.uniform(0.0, 255.0) as u8).collect();
    let img = image::GrayImage::from_raw(6, 6, pixels).unwrap();
    let mut bytes = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)
        .unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
    for baseline in ["black", "white", "mean"] {
        let v = explain(
            &s,
            "chain",
            "deeplift",
            json!({"image": b64, "params": {"baseline": baseline}}),
        )
        .await;
        let total: f64 = attribution_values(&v).iter().sum();
        let delta = v["convergence_delta"].as_f64().unwrap();
        let difference = total - delta;
        assert!(difference.abs() > 1e-4, "{baseline}: a reference the model tells apart");
        assert!(
            delta.abs() <= 1e-4 * difference.abs().max(1e-3),
            "{baseline}: delta {delta} of {difference}"
        );
    }
    // DeepLiftShap: seeded, and complete against the references' mean score.
    let a = explain(
        &s,
        "mlp",
        "deeplift-shap",
        json!({"features": [0.9, -0.4, 1.7], "seed": 3, "params": {"baselines": 4}}),
    )
    .await;
    let b = explain(
        &s,
        "mlp",
        "deeplift-shap",
        json!({"features": [0.9, -0.4, 1.7], "seed": 3, "params": {"baselines": 4}}),
    )
    .await;
    assert_eq!(a["attributions"], b["attributions"]);
    assert!(a["convergence_delta"].as_f64().unwrap().abs() < 1e-5, "{a}");
    assert_eq!(
        a["stats"]["model_rows"],
        1 + 8,
        "the top class, then four pairs of rows"
    );
    let c = explain(&s, "chain", "deeplift-shap", json!({"image": b64, "seed": 1})).await;
    assert!(c["convergence_delta"].as_f64().unwrap().abs() < 1e-3, "{c}");
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_pooling_gives_a_tied_window_to_its_first_maximum_as_captum_does() {
    let s = start_models().await;
    let mut rng = Rng::new(8);
    let pixels: Vec<u8> = (0..CNN_SIDE * CNN_SIDE)
        .map(|_| rng.uniform(0.0, 255.0) as u8)
        .collect();
    let x: Vec<f64> = pixels
        .iter()
        .map(|p| f64::from(f32::from(*p) * (1.0 / 255.0)))
        .collect();
    let img = image::GrayImage::from_raw(CNN_SIDE as u32, CNN_SIDE as u32, pixels).unwrap();
    let mut bytes = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)
        .unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
    let black = vec![0f64; x.len()];
    for (model, cnn) in [("tiles", PooledCnn::new(2, 2)), ("overlap", PooledCnn::new(3, 2))] {
        for target in [0usize, 1] {
            let v = explain(
                &s,
                model,
                "deeplift",
                json!({"image": b64, "target": target, "params": {"baseline": "black"}}),
            )
            .await;
            let got = attribution_values(&v);
            let expected = cnn.deeplift(&x, &black, target);
            assert_eq!(got.len(), expected.len());
            for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
                assert!(
                    (g - e).abs() < 1e-5,
                    "{model} target {target} pixel {i}: {g} vs {e} (all: {got:?} vs {expected:?})"
                );
            }
            let delta = v["convergence_delta"].as_f64().unwrap();
            let total: f64 = expected.iter().sum();
            assert!(total.abs() > 1e-3, "{model}: a reference the model tells apart");
            assert!(delta.abs() < 1e-5, "{model} target {target}: delta {delta} of {total}");
        }
    }
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_never_share_a_pass_and_bad_parameters_are_refused() {
    let s = start_models().await;
    let fashion = base64::engine::general_purpose::STANDARD
        .encode(std::fs::read(root().join("tests/fixtures/fashion/test_00.png")).unwrap());
    let alone = explain(&s, "fashion-cnn", "deeplift", json!({"image": fashion})).await;
    // Max pooling as Captum handles it keeps completeness on the bundled CNN too.
    let total: f64 = attribution_values(&alone).iter().sum();
    let delta = alone["convergence_delta"].as_f64().unwrap();
    assert!(
        delta.abs() <= 1e-4 * (total - delta).abs(),
        "fashion-cnn: delta {delta} of {}",
        total - delta
    );
    // Pairs are the halves of their pass: concurrent requests batched together would mix them.
    let mut handles = Vec::new();
    for _ in 0..6 {
        let (addr, body) = (
            url(&s, "/v1/models/fashion-cnn/explain/deeplift"),
            json!({"image": fashion}),
        );
        handles.push(tokio::spawn(async move {
            reqwest::Client::new()
                .post(addr)
                .json(&body)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }));
    }
    for h in handles {
        assert_eq!(h.await.unwrap()["attributions"], alone["attributions"]);
    }
    for params in [json!({"baselines": 0}), json!({"baselines": 101})] {
        let resp = post_json(
            &s,
            "/v1/models/mlp/explain/deeplift-shap",
            &json!({"features": [1, 2, 3], "params": params}),
        )
        .await;
        let p = problem(resp, StatusCode::BAD_REQUEST, "invalid-request").await;
        assert!(p["detail"].as_str().unwrap().contains("baselines"), "{p}");
    }
    s.stop().await.unwrap();
}
