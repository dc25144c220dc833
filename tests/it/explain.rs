//! Gradient explanation endpoints: known-answer models built here (a classifier that reads only one
//! region of the image, a linear tabular model), agreement with independently computed references,
//! PNG overlays, targets, parameters, seeds, and errors. A real server on loopback throughout.

use crate::common;

use base64::Engine;
use common::gradcheck::{backward, run_output, runner};
use common::*;
use explaind::onnx::autodiff::{RuleTable, WEIGHTS_INPUT};
use explaind::onnx::builder::{Attr, GraphBuilder};
use reqwest::StatusCode;
use serde_json::{json, Value};

pub(crate) const SIDE: usize = 16;
/// The region the region model reads (its masked activations), and the input pixels that reach it
/// through the 3x3 convolution.
pub(crate) const REGION: std::ops::Range<usize> = 2..8;
pub(crate) const REACH: std::ops::Range<usize> = 1..9;

/// logits = Gemm(GAP(mask * relu(conv(x)))): only REGION x REGION of the activation counts.
pub(crate) fn region_model() -> explaind::onnx::proto::ModelProto {
    let mut g = GraphBuilder::new("region", 17);
    let x = g.input("input", &[-1, 1, SIDE as i64, SIDE as i64]);
    let mut rng = Rng::new(41);
    let w: Vec<f32> = (0..4 * 9).map(|_| rng.uniform(0.1, 1.0)).collect();
    let w = g.constant("w", &[4, 1, 3, 3], &w);
    let b = g.constant("b", &[4], &[0.0, -0.1, 0.05, 0.0]);
    let conv = g.node("Conv", &[&x, &w, &b], vec![("pads", Attr::Ints(vec![1, 1, 1, 1]))]);
    let relu = g.node("Relu", &[&conv], vec![]);
    let mut mask = vec![0f32; SIDE * SIDE];
    for y in REGION {
        for x in REGION {
            mask[y * SIDE + x] = 1.0;
        }
    }
    let mask = g.constant("mask", &[1, 1, SIDE as i64, SIDE as i64], &mask);
    g.node_with_outputs("Mul", &[&relu, &mask], &["masked"], vec![]);
    let masked = "masked".to_string();
    let gap = g.node("GlobalAveragePool", &[&masked], vec![]);
    let flat = g.node("Flatten", &[&gap], vec![("axis", Attr::Int(1))]);
    let fc = g.constant("fc", &[4, 2], &[1.0, -1.0, 0.5, -0.5, 2.0, -2.0, 1.5, -1.5]);
    g.node("Gemm", &[&flat, &fc], vec![]);
    g.rename_last_output("logits");
    g.output("logits", &[-1, 2]);
    g.build()
}

pub(crate) const REGION_MANIFEST: &str =
    "task = \"image-classification\"\nlabels = [\"region\", \"other\"]\n[image]\ncolor = \"grayscale\"\n";

const LINEAR_MANIFEST: &str = "task = \"tabular-classification\"\nscores = \"raw\"\nlabels = [\"a\", \"b\"]\n[tabular]\nfeatures = [\"f0\", \"f1\", \"f2\", \"f3\"]\nbackground = \"background.csv\"\n";

/// 20 background rows for the linear model (columns in another order than the features, as files may be).
fn linear_background() -> (String, Vec<[f32; 4]>) {
    let mut rng = Rng::new(77);
    let rows: Vec<[f32; 4]> = (0..20)
        .map(|_| {
            [
                rng.uniform(-2.0, 2.0),
                rng.uniform(-2.0, 2.0),
                rng.uniform(-2.0, 2.0),
                rng.uniform(-2.0, 2.0),
            ]
        })
        .collect();
    let mut csv = String::from("f3,f1,f0,f2\n");
    for r in &rows {
        csv.push_str(&format!("{},{},{},{}\n", r[3], r[1], r[0], r[2]));
    }
    (csv, rows)
}

async fn start_known_answer() -> explaind::Service {
    let dir = temp_dir("explain-models");
    write_model(&dir, "region", &region_model(), REGION_MANIFEST);
    write_model(&dir, "linear", &linear_model().0, LINEAR_MANIFEST);
    std::fs::write(dir.join("linear/background.csv"), linear_background().0).unwrap();
    for m in ["fashion-cnn", "breast-cancer"] {
        common::copy_bundled(m, &dir);
    }
    let mut odd = GraphBuilder::new("odd", 17);
    let x = odd.input("input", &[-1, 3]);
    let s = odd.node("Sin", &[&x], vec![]);
    odd.node("Identity", &[&s], vec![]);
    odd.rename_last_output("scores");
    odd.output("scores", &[-1, 3]);
    write_model(&dir, "odd", &odd.build(), "task = \"tabular-classification\"\n");
    start(test_config(&dir)).await
}

/// A noise image (seeded), `side` x `side`, grayscale PNG.
pub(crate) fn noise_png(side: u32, seed: u64) -> (Vec<u8>, image::GrayImage) {
    let mut rng = Rng::new(seed);
    let img = image::GrayImage::from_fn(side, side, |_, _| image::Luma([rng.uniform(40.0, 255.0) as u8]));
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    (png, img)
}

async fn explain_json(http: &reqwest::Client, s: &explaind::Service, model: &str, method: &str, body: Value) -> Value {
    let r = http
        .post(url(s, &format!("/v1/models/{model}/explain/{method}")))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let v: Value = r.json().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{method}: {v}");
    v
}

fn values(v: &Value) -> Vec<f32> {
    v["attributions"]["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_method_puts_the_attribution_where_the_model_looks() {
    let s = start_known_answer().await;
    let http = reqwest::Client::new();
    let (png, _) = noise_png(SIDE as u32, 1);
    let b64 = base64::engine::general_purpose::STANDARD.encode(&png);
    use explaind::explain::Passes;
    let methods = explaind::explain::Methods::standard();
    // The methods the model's page lists as applicable (the attention methods explain
    // transformers, tests/it/attention.rs, and are not listed for this CNN), less those answering
    // reference rows rather than an attribution (tests/it/reference.rs) and those answering an
    // image they made (`makes_image`, tests/it/actmax.rs).
    let info: Value = http
        .get(url(&s, "/v1/models/region"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let applicable: Vec<&str> = info["methods"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(applicable.len() >= 15, "{info}");
    let attributing = methods
        .iter()
        .filter(|m| applicable.contains(&m.name()) && !m.capabilities().examples && !m.capabilities().makes_image)
        .collect::<Vec<_>>();
    assert!(
        attributing.len() >= 17,
        "only {} methods apply to the region model",
        attributing.len()
    );
    for method in attributing {
        let caps = method.capabilities();
        let cam = caps.layer;
        let body = json!({"image": b64, "target": "region", "seed": 5});
        let v = explain_json(&http, &s, "region", method.name(), body).await;
        assert_eq!(v["attributions"]["shape"], json!([SIDE, SIDE]), "{}", method.name());
        assert_eq!(v["target"]["label"], "region");
        let map = values(&v);
        // A method whose answer says that hiding the whole input leaves the score where it was has
        // nothing to find here: extremal perturbation blurs what it hides (`details.blurred_score`),
        // and this model hardly reacts to blur (a linear filter, then ReLU of positive sums);
        // tests/it/extremal.rs gives it a model that reads detail in one region.
        let d = &v["details"];
        if let (Some(kept), Some(hidden)) = (d["score"].as_f64(), d["blurred_score"].as_f64()) {
            if (kept - hidden).abs() <= 0.05 * kept.abs() {
                continue;
            }
        }
        // XRAI's map gives each region its mean attribution, so it spills over the segments that
        // straddle the region's edge, as perturbation maps do.
        let spills = caps.passes == Passes::Forward || d["region_map"].is_object();
        if spills {
            // Perturbation maps carry an offset (RISE), spill over a window or segment (occlusion, LIME):
            // the hottest pixels lie in the region, and the region is hotter than the rest.
            let near = 0..REACH.end + 1;
            let (mut inside, mut outside) = (Vec::new(), Vec::new());
            for y in 0..SIDE {
                for x in 0..SIDE {
                    let v = map[y * SIDE + x];
                    if near.contains(&y) && near.contains(&x) {
                        inside.push(v)
                    } else {
                        outside.push(v)
                    }
                }
            }
            let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len() as f32;
            assert!(
                mean(&inside) > mean(&outside) + 1e-6,
                "{}: region {} vs elsewhere {}",
                method.name(),
                mean(&inside),
                mean(&outside)
            );
            let hottest = (0..SIDE * SIDE).max_by(|a, b| map[*a].total_cmp(&map[*b])).unwrap();
            assert!(
                near.contains(&(hottest / SIDE)) && near.contains(&(hottest % SIDE)),
                "{}: hottest pixel {hottest}",
                method.name()
            );
            continue;
        }
        let inside = if cam { REGION } else { REACH };
        let (mut mass_in, mut mass) = (0f64, 0f64);
        for y in 0..SIDE {
            for x in 0..SIDE {
                let m = map[y * SIDE + x].abs() as f64;
                mass += m;
                if inside.contains(&y) && inside.contains(&x) {
                    mass_in += m;
                }
            }
        }
        assert!(mass > 0.0, "{}: empty attribution", method.name());
        // Bilinear upsampling of CAMs spreads a little past the region's edge.
        let share = mass_in / mass;
        let needed = if cam { 0.9 } else { 0.999 };
        assert!(
            share >= needed,
            "{}: only {:.3} of the attribution lies in the region",
            method.name(),
            share
        );
        if cam {
            assert_eq!(v["layer"], "masked", "{}: default CAM layer", method.name());
        }
    }
    s.stop().await.unwrap();
}

#[tokio::test]
async fn linear_model_closed_forms() {
    let s = start_known_answer().await;
    let http = reqwest::Client::new();
    let (_, w) = linear_model();
    let x = [1.5f32, -2.0, 0.5, 3.0];
    // Target b (index 1): weights column 1.
    let col: Vec<f32> = (0..4).map(|i| w[i * 2 + 1]).collect();
    let body = json!({"features": x, "target": 1});
    let sal = explain_json(
        &http,
        &s,
        "linear",
        "saliency",
        json!({"features": x, "target": 1, "params": {"abs": false}}),
    )
    .await;
    let gxi = explain_json(&http, &s, "linear", "gradient-x-input", body.clone()).await;
    let ig = explain_json(&http, &s, "linear", "integrated-gradients", body.clone()).await;
    let ig_trap = explain_json(
        &http,
        &s,
        "linear",
        "integrated-gradients",
        json!({"features": x, "target": 1, "params": {"integration": "riemann_trapezoid", "steps": 7}}),
    )
    .await;
    for i in 0..4 {
        assert!((values(&sal)[i] - col[i]).abs() < 1e-6, "saliency");
        assert!((values(&gxi)[i] - x[i] * col[i]).abs() < 1e-5, "gradient x input");
        // A black baseline for tabular models is all zeros: IG = x * w exactly.
        assert!(
            (values(&ig)[i] - x[i] * col[i]).abs() < 1e-4,
            "integrated gradients: {} vs {}",
            values(&ig)[i],
            x[i] * col[i]
        );
        assert!((values(&ig_trap)[i] - x[i] * col[i]).abs() < 1e-4, "trapezoid");
    }
    assert!(ig["convergence_delta"].as_f64().unwrap().abs() < 1e-4);
    // Tabular answers name the features, by decreasing magnitude.
    let features = gxi["features"].as_array().unwrap();
    assert_eq!(features[0]["name"], "f3");
    assert_eq!(features[0]["value"], 3.0);
    assert_eq!(ig["params"]["steps"], 50);
    assert_eq!(ig["params"]["integration"], "gauss_legendre");
    s.stop().await.unwrap();
}

#[tokio::test]
async fn integrated_gradients_converges_on_the_example_cnn() {
    let s = start_known_answer().await;
    let http = reqwest::Client::new();
    let png = std::fs::read(root().join("tests/fixtures/fashion/test_00.png")).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&png);
    let v = explain_json(
        &http,
        &s,
        "fashion-cnn",
        "integrated-gradients",
        json!({"image": b64, "include": ["tensor"]}),
    )
    .await;
    let total: f64 = v["attributions"]["tensor"]["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .sum();
    let delta = v["convergence_delta"].as_f64().unwrap();
    // f(x) - f(baseline) = sum - delta.
    let gap = total - delta;
    assert!(
        delta.abs() < 0.01 * gap.abs(),
        "delta {delta} vs f(x) - f(baseline) = {gap}"
    );
    assert_eq!(v["stats"]["model_rows"], 52, "50 path points + input + baseline");
    // Where the time went: ONNX Runtime's runs within the worker's time within the request's.
    let ms = |k: &str| v["stats"][k].as_f64().unwrap();
    assert!(ms("model_ms") > 0.0, "{}", v["stats"]);
    assert!(
        ms("model_ms") <= ms("worker_ms") && ms("worker_ms") <= ms("wall_ms"),
        "{}",
        v["stats"]
    );
    s.stop().await.unwrap();
}

/// `model`, `worker` and `total` durations of a `Server-Timing` header, milliseconds.
fn server_timing(headers: &reqwest::header::HeaderMap) -> [f64; 3] {
    let header = headers["server-timing"].to_str().unwrap();
    ["model", "worker", "total"].map(|name| {
        header
            .split(',')
            .map(str::trim)
            .find(|m| m.split(';').next() == Some(name))
            .and_then(|m| m.split(';').find_map(|p| p.strip_prefix("dur=")))
            .unwrap_or_else(|| panic!("no {name} in {header}"))
            .parse()
            .unwrap()
    })
}

#[tokio::test]
async fn gradient_x_input_and_grad_cam_agree_with_independent_references() {
    let s = start_known_answer().await;
    let http = reqwest::Client::new();
    let runner = runner();
    // Gradient x input on the breast-cancer MLP against central differences of its logit.
    let holdout: Value =
        serde_json::from_slice(&std::fs::read(root().join("tests/fixtures/breast_cancer_holdout.json")).unwrap())
            .unwrap();
    let x: Vec<f32> = holdout["cases"][0]["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    let v = explain_json(
        &http,
        &s,
        "breast-cancer",
        "gradient-x-input",
        json!({"features": x, "target": 1}),
    )
    .await;
    let got = values(&v);
    let model =
        explaind::onnx::proto::decode_model(&std::fs::read(root().join("models/breast-cancer/model.onnx")).unwrap())
            .unwrap();
    let mut forward = runner.session(&model).unwrap();
    for i in 0..30 {
        let h = (x[i].abs() * 1e-3).max(1e-4);
        let mut plus = x.clone();
        plus[i] += h;
        let mut minus = x.clone();
        minus[i] -= h;
        let (_, yp) = run_output(&mut forward, &[("input", vec![1, 30], plus)], "logits");
        let (_, ym) = run_output(&mut forward, &[("input", vec![1, 30], minus)], "logits");
        let expected = (yp[1] - ym[1]) as f64 / (2.0 * h as f64) * x[i] as f64;
        assert!(
            (got[i] as f64 - expected).abs() < 2e-3 + 2e-2 * expected.abs(),
            "feature {i}: {} vs {expected}",
            got[i]
        );
    }
    // Grad-CAM on fashion-cnn against the layer's activations and gradients from a backward model
    // built here: channel weights = mean gradient, ReLU of the weighted sum, bilinear to 28x28.
    let png = std::fs::read(root().join("tests/fixtures/fashion/test_03.png")).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&png);
    let v = explain_json(&http, &s, "fashion-cnn", "grad-cam", json!({"image": b64, "target": 2})).await;
    let got = values(&v);
    let fashion =
        explaind::onnx::proto::decode_model(&std::fs::read(root().join("models/fashion-cnn/model.onnx")).unwrap())
            .unwrap();
    let bw = backward(
        &fashion,
        "input",
        &[1, 1, 28, 28],
        "logits",
        &["relu3"],
        &RuleTable::exact(),
    );
    let mut session = runner.session(&bw.model).unwrap();
    let img = image::load_from_memory(&png).unwrap().to_luma8();
    let input: Vec<f32> = img
        .pixels()
        .map(|p| (p.0[0] as f32 / 255.0 - 0.2860) / 0.3530)
        .collect();
    let mut w = vec![0f32; 10];
    w[2] = 1.0;
    let feeds = [("input", vec![1, 1, 28, 28], input), (WEIGHTS_INPUT, vec![1, 10], w)];
    let (_, act) = run_output(&mut session, &feeds, "relu3");
    let (_, grad) = run_output(&mut session, &feeds, "relu3.grad");
    let mut cam = vec![0f32; 49];
    for k in 0..64 {
        let alpha: f32 = grad[k * 49..(k + 1) * 49].iter().sum::<f32>() / 49.0;
        for p in 0..49 {
            cam[p] += alpha * act[k * 49 + p];
        }
    }
    let cam: Vec<f32> = cam.into_iter().map(|v| v.max(0.0)).collect();
    let small = image::ImageBuffer::<image::Luma<f32>, Vec<f32>>::from_raw(7, 7, cam).unwrap();
    let expected = image::imageops::resize(&small, 28, 28, image::imageops::FilterType::Triangle).into_raw();
    let scale = expected.iter().fold(0f32, |a, b| a.max(b.abs())).max(1e-6);
    for (a, b) in got.iter().zip(&expected) {
        assert!((a - b).abs() <= 1e-4 * scale, "grad-cam {a} vs {b}");
    }
    s.stop().await.unwrap();
}

#[tokio::test]
async fn png_overlays_show_the_region_at_the_original_size() {
    let s = start_known_answer().await;
    let http = reqwest::Client::new();
    // A 64x64 image: the model sees it resized to 16x16; the overlay is drawn at 64x64.
    let (png, original) = noise_png(64, 2);
    let r = http
        .post(url(
            &s,
            "/v1/models/region/explain/grad-cam?format=png&target=region&overlay=grayscale&alpha=0.8",
        ))
        .header("content-type", "image/png")
        .body(png.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "image/png");
    assert!(r.headers().contains_key("x-explanation-id"));
    assert_eq!(r.headers()["x-explanation-target"], "0:region");
    let [model, worker, total] = server_timing(r.headers());
    assert!(
        model > 0.0 && model <= worker && worker <= total,
        "{:?}",
        r.headers()["server-timing"]
    );
    let overlay = image::load_from_memory(&r.bytes().await.unwrap()).unwrap().to_rgb8();
    assert_eq!(overlay.dimensions(), (64, 64));
    // The most coloured pixels (farthest from grey) lie in the region, scaled by 4.
    let colour = |p: &image::Rgb<u8>| {
        let [r, g, b] = p.0.map(|c| c as i32);
        (r - g).abs() + (g - b).abs() + (r - b).abs()
    };
    let mut pixels: Vec<(i32, u32, u32)> = overlay.enumerate_pixels().map(|(x, y, p)| (colour(p), x, y)).collect();
    pixels.sort_by_key(|p| std::cmp::Reverse(p.0));
    for &(c, x, y) in pixels.iter().take(100) {
        assert!(c > 0);
        let (rx, ry) = (x as usize / 4, y as usize / 4);
        assert!(
            REACH.contains(&rx) && REACH.contains(&ry),
            "a hot pixel at ({x}, {y}) lies outside the region"
        );
    }
    let _ = original;
    // Two targets: two panels side by side; the JSON form can embed the PNG too.
    let r = http
        .post(url(&s, "/v1/models/region/explain/saliency?target=0,1"))
        .header("content-type", "image/png")
        .header("accept", "image/png")
        .body(png.clone())
        .send()
        .await
        .unwrap();
    let both = image::load_from_memory(&r.bytes().await.unwrap()).unwrap();
    assert_eq!((both.width(), both.height()), (128, 64));
    let b64 = base64::engine::general_purpose::STANDARD.encode(&png);
    let v = explain_json(
        &http,
        &s,
        "region",
        "saliency",
        json!({"image": b64, "include": ["overlay"], "render": {"colormap": "inferno"}}),
    )
    .await;
    let embedded = base64::engine::general_purpose::STANDARD
        .decode(v["overlay_png"].as_str().unwrap())
        .unwrap();
    assert_eq!(image::load_from_memory(&embedded).unwrap().width(), 64);
    s.stop().await.unwrap();
}

#[tokio::test]
async fn targets_seeds_and_input_forms() {
    let s = start_known_answer().await;
    let http = reqwest::Client::new();
    let png = std::fs::read(root().join("tests/fixtures/fashion/test_00.png")).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&png);
    // top_k: one explanation per target, in score order, computed in one batch.
    let v = explain_json(
        &http,
        &s,
        "fashion-cnn",
        "saliency",
        json!({"image": b64, "target": {"top_k": 3}}),
    )
    .await;
    let list = v["explanations"].as_array().unwrap();
    assert_eq!(list.len(), 3);
    assert!(list[0]["target"]["score"].as_f64() >= list[1]["target"]["score"].as_f64());
    assert!(v.get("attributions").is_none());
    assert_eq!(v["stats"]["model_rows"], 4);
    // Labels and indices.
    let v = explain_json(
        &http,
        &s,
        "fashion-cnn",
        "saliency",
        json!({"image": b64, "target": ["Sneaker", 0]}),
    )
    .await;
    assert_eq!(v["explanations"][0]["target"]["index"], 7);
    assert_eq!(v["explanations"][1]["target"]["label"], "T-shirt/top");
    // The same seed gives the same numbers; another seed other numbers; no seed: one is drawn and echoed.
    let a = explain_json(
        &http,
        &s,
        "fashion-cnn",
        "smoothgrad",
        json!({"image": b64, "seed": 9, "params": {"samples": 8}}),
    )
    .await;
    let b = explain_json(
        &http,
        &s,
        "fashion-cnn",
        "smoothgrad",
        json!({"image": b64, "seed": 9, "params": {"samples": 8}}),
    )
    .await;
    let c = explain_json(
        &http,
        &s,
        "fashion-cnn",
        "smoothgrad",
        json!({"image": b64, "seed": 10, "params": {"samples": 8}}),
    )
    .await;
    assert_eq!(a["attributions"], b["attributions"]);
    assert_ne!(a["attributions"], c["attributions"]);
    assert_eq!(a["seed"], 9);
    let d = explain_json(
        &http,
        &s,
        "fashion-cnn",
        "smoothgrad",
        json!({"image": b64, "params": {"samples": 4, "variant": "vargrad"}}),
    )
    .await;
    assert!(d["seed"].is_u64());
    assert_eq!(d["params"]["noise_level"], 0.15);
    // Raw body with query parameters, and multipart with a request part, match JSON.
    let raw: Value = http
        .post(url(
            &s,
            "/v1/models/fashion-cnn/explain/integrated-gradients?steps=8&target=3",
        ))
        .header("content-type", "image/png")
        .body(png.clone())
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
        .text("request", r#"{"target": 3, "params": {"steps": 8}}"#);
    let multipart: Value = http
        .post(url(&s, "/v1/models/fashion-cnn/explain/integrated-gradients"))
        .multipart(form)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let json_form = explain_json(
        &http,
        &s,
        "fashion-cnn",
        "integrated-gradients",
        json!({"image": b64, "target": 3, "params": {"steps": 8}}),
    )
    .await;
    assert_eq!(raw["attributions"], json_form["attributions"]);
    assert_eq!(multipart["attributions"], json_form["attributions"]);
    assert_eq!(raw["params"]["steps"], 8);
    s.stop().await.unwrap();
}

/// The detail of a problem response, after checking it.
async fn detail_of(r: reqwest::Response, status: StatusCode, slug: &str) -> String {
    problem(r, status, slug).await["detail"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn bad_explanation_requests() {
    let s = start_known_answer().await;
    let http = reqwest::Client::new();
    let png = std::fs::read(root().join("tests/fixtures/fashion/test_00.png")).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&png);
    let post = |path: &str, body: Value| http.post(url(&s, path)).json(&body).send();
    let detail = detail_of(
        post("/v1/models/fashion-cnn/explain/lime-ish", json!({"image": b64}))
            .await
            .unwrap(),
        StatusCode::NOT_FOUND,
        "not-found",
    )
    .await;
    assert!(detail.contains("integrated-gradients"), "{detail}");
    let detail = detail_of(
        post(
            "/v1/models/fashion-cnn/explain/saliency",
            json!({"image": b64, "params": {"absolute": true}}),
        )
        .await
        .unwrap(),
        StatusCode::BAD_REQUEST,
        "invalid-request",
    )
    .await;
    assert!(detail.contains("absolute"), "{detail}");
    detail_of(
        post(
            "/v1/models/fashion-cnn/explain/integrated-gradients",
            json!({"image": b64, "params": {"steps": 1}}),
        )
        .await
        .unwrap(),
        StatusCode::BAD_REQUEST,
        "invalid-request",
    )
    .await;
    detail_of(
        post(
            "/v1/models/fashion-cnn/explain/integrated-gradients",
            json!({"image": b64, "params": {"steps": 100000}}),
        )
        .await
        .unwrap(),
        StatusCode::BAD_REQUEST,
        "invalid-request",
    )
    .await;
    detail_of(
        post(
            "/v1/models/fashion-cnn/explain/smoothgrad",
            json!({"image": b64, "params": {"variant": "loud"}}),
        )
        .await
        .unwrap(),
        StatusCode::BAD_REQUEST,
        "invalid-request",
    )
    .await;
    let detail = detail_of(
        post(
            "/v1/models/fashion-cnn/explain/saliency",
            json!({"image": b64, "target": "Banana"}),
        )
        .await
        .unwrap(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid-input",
    )
    .await;
    assert!(detail.contains("Banana"), "{detail}");
    detail_of(
        post(
            "/v1/models/fashion-cnn/explain/saliency",
            json!({"image": b64, "target": 12}),
        )
        .await
        .unwrap(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid-input",
    )
    .await;
    let detail = detail_of(
        post(
            "/v1/models/fashion-cnn/explain/grad-cam",
            json!({"image": b64, "params": {"layer": "logits"}}),
        )
        .await
        .unwrap(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid-input",
    )
    .await;
    assert!(detail.contains("relu3"), "candidates are listed: {detail}");
    detail_of(
        post(
            "/v1/models/breast-cancer/explain/grad-cam",
            json!({"features": vec![1.0; 30]}),
        )
        .await
        .unwrap(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid-input",
    )
    .await;
    let detail = detail_of(
        post("/v1/models/odd/explain/saliency", json!({"features": [1, 2, 3]}))
            .await
            .unwrap(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "model-not-differentiable",
    )
    .await;
    assert!(detail.contains("Sin"), "{detail}");
    detail_of(
        post(
            "/v1/models/fashion-cnn/explain/saliency",
            json!({"image": b64, "render": {"alpha": 3}}),
        )
        .await
        .unwrap(),
        StatusCode::BAD_REQUEST,
        "invalid-request",
    )
    .await;
    // More targets than max_targets (10).
    let detail = detail_of(
        post(
            "/v1/models/fashion-cnn/explain/saliency",
            json!({"image": b64, "target": [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0]}),
        )
        .await
        .unwrap(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid-input",
    )
    .await;
    assert!(detail.contains("at most 10"), "{detail}");
    detail_of(
        post("/v1/models/nope/explain/saliency", json!({"image": b64}))
            .await
            .unwrap(),
        StatusCode::NOT_FOUND,
        "model-not-found",
    )
    .await;
    detail_of(
        http.post(url(&s, "/v1/models/fashion-cnn/explain/saliency?colour=red"))
            .header("content-type", "image/png")
            .body(png.clone())
            .send()
            .await
            .unwrap(),
        StatusCode::BAD_REQUEST,
        "invalid-request",
    )
    .await;
    // Still serving.
    explain_json(&http, &s, "fashion-cnn", "saliency", json!({"image": b64})).await;
    s.stop().await.unwrap();
}

#[tokio::test]
async fn predictions_carry_explanations_when_asked() {
    let s = start_known_answer().await;
    let http = reqwest::Client::new();
    let png = std::fs::read(root().join("tests/fixtures/fashion/test_00.png")).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&png);
    let endpoint = url(&s, "/v1/models/fashion-cnn/predict");
    let v: Value = http
        .post(&endpoint)
        .json(&json!({"image": b64, "top_k": 2, "explain": {"method": "saliency"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["predictions"].as_array().unwrap().len(), 2);
    let e = &v["explanation"];
    assert_eq!(e["method"], "saliency");
    assert_eq!(e["target"]["index"], v["predictions"][0]["index"]);
    assert_eq!(e["attributions"]["shape"], json!([28, 28]));
    // The prediction's forward pass serves the explanation: only the gradient pass is added.
    assert_eq!(e["stats"]["model_rows"], 1);
    let alone = explain_json(&http, &s, "fashion-cnn", "saliency", json!({"image": b64})).await;
    assert_eq!(alone["attributions"], e["attributions"]);

    // `when` does not hold: a prediction without explanation.
    let v: Value = http
        .post(&endpoint)
        .json(&json!({"image": b64, "explain": {"method": "grad-cam", "when": {"labels": ["Sneaker"]}}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["predictions"][0]["label"], "Ankle boot");
    assert!(v.get("explanation").is_none(), "{v}");

    // A batch: only the confident predictions are explained.
    let other = base64::engine::general_purpose::STANDARD
        .encode(std::fs::read(root().join("tests/fixtures/fashion/test_01.png")).unwrap());
    let v: Value = http
        .post(&endpoint)
        .json(&json!({"instances": [{"image": b64}, {"image": other}], "explain": {"method": "integrated-gradients", "params": {"steps": 8}, "when": {"min_score": 0.5}}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let rows = v["instances"].as_array().unwrap();
    for row in rows {
        let confident = row["predictions"][0]["score"].as_f64().unwrap() >= 0.5;
        assert_eq!(row.get("explanation").is_some(), confident, "{row}");
    }
    // A bad explain spec is refused before any work.
    let r = http
        .post(&endpoint)
        .json(&json!({"image": b64, "explain": {"method": "saliency", "params": {"steps": 3}}}))
        .send()
        .await
        .unwrap();
    detail_of(r, StatusCode::BAD_REQUEST, "invalid-request").await;
    s.stop().await.unwrap();
}

#[tokio::test]
async fn perturbation_methods_are_exact_seeded_and_bounded() {
    let s = start_known_answer().await;
    let http = reqwest::Client::new();
    let (png, img) = noise_png(SIDE as u32, 3);
    let b64 = base64::engine::general_purpose::STANDARD.encode(&png);
    // Occlusion with a one-pixel window: each pixel's value is the score drop when it alone turns black.
    let v = explain_json(
        &http,
        &s,
        "region",
        "occlusion",
        json!({"image": b64, "target": 0, "params": {"window": 1, "stride": 1}}),
    )
    .await;
    let map = values(&v);
    assert_eq!(v["stats"]["model_rows"], 1 + SIDE * SIDE);
    let logit = |image: &image::GrayImage| {
        let mut bytes = Vec::new();
        image
            .write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)
            .unwrap();
        let http = http.clone();
        let endpoint = url(&s, "/v1/models/region/predict");
        async move {
            let r: Value = http
                .post(endpoint)
                .header("content-type", "image/png")
                .body(bytes)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            r["outputs"]["logits"][0].as_f64().unwrap()
        }
    };
    let full = logit(&img).await;
    for (x, y) in [(3u32, 4u32), (1, 1), (12, 12)] {
        let mut occluded = img.clone();
        occluded.put_pixel(x, y, image::Luma([0]));
        let expected = full - logit(&occluded).await;
        let got = map[y as usize * SIDE + x as usize] as f64;
        assert!((got - expected).abs() < 1e-4, "pixel ({x}, {y}): {got} vs {expected}");
    }
    // RISE: seeded masks.
    let a = explain_json(
        &http,
        &s,
        "region",
        "rise",
        json!({"image": b64, "seed": 4, "params": {"masks": 64}}),
    )
    .await;
    let b = explain_json(
        &http,
        &s,
        "region",
        "rise",
        json!({"image": b64, "seed": 4, "params": {"masks": 64}}),
    )
    .await;
    let c = explain_json(
        &http,
        &s,
        "region",
        "rise",
        json!({"image": b64, "seed": 5, "params": {"masks": 64}}),
    )
    .await;
    assert_eq!(a["attributions"], b["attributions"]);
    assert_ne!(a["attributions"], c["attributions"]);
    assert_eq!(a["seed"], 4);
    assert_eq!(a["stats"]["model_rows"], 65);
    // LIME: segment weights, the local model's fit, and seeded samples.
    let l1 = explain_json(
        &http,
        &s,
        "region",
        "lime",
        json!({"image": b64, "seed": 8, "params": {"samples": 200, "segments": 16}}),
    )
    .await;
    let l2 = explain_json(
        &http,
        &s,
        "region",
        "lime",
        json!({"image": b64, "seed": 8, "params": {"samples": 200, "segments": 16}}),
    )
    .await;
    assert_eq!(l1["attributions"], l2["attributions"]);
    let details = &l1["details"];
    let segments = details["segments"].as_u64().unwrap() as usize;
    assert!(segments >= 2);
    assert_eq!(details["segment_weights"].as_array().unwrap().len(), segments);
    assert_eq!(details["segment_map"]["values"].as_array().unwrap().len(), SIDE * SIDE);
    assert!(
        details["r2"].as_f64().unwrap() > 0.5,
        "the local model fits: {}",
        details["r2"]
    );
    assert_eq!(l1["stats"]["model_rows"], 201);
    let ses = details["standard_errors"].as_array().unwrap();
    assert_eq!(ses.len(), segments);
    assert!(ses.iter().all(|v| v.as_f64().unwrap().is_finite()), "{ses:?}");
    assert_eq!(details["samples"], 200);
    // `auto` stops once every standard error is below the tolerance, well short of the budget.
    let auto = explain_json(
        &http,
        &s,
        "region",
        "lime",
        json!({"image": b64, "seed": 8, "params": {"samples": "auto", "tolerance": 0.05, "segments": 16}}),
    )
    .await;
    let d = &auto["details"];
    assert_eq!(d["stopped"], "every standard error is below the tolerance", "{d}");
    let drawn = d["samples"].as_u64().unwrap();
    assert!(drawn < 4000, "{drawn}");
    assert_eq!(auto["stats"]["model_rows"], drawn + 1);
    assert!(d["standard_errors"]
        .as_array()
        .unwrap()
        .iter()
        .all(|v| v.as_f64().unwrap() < 0.05));
    // Bounds and applicability.
    let post = |method: &str, body: Value| {
        http.post(url(&s, &format!("/v1/models/region/explain/{method}")))
            .json(&body)
            .send()
    };
    problem(
        post("rise", json!({"image": b64, "params": {"masks": 100000}}))
            .await
            .unwrap(),
        StatusCode::BAD_REQUEST,
        "invalid-request",
    )
    .await;
    problem(
        post("rise", json!({"image": b64, "params": {"p": 1.5}})).await.unwrap(),
        StatusCode::BAD_REQUEST,
        "invalid-request",
    )
    .await;
    problem(
        post("occlusion", json!({"image": b64, "params": {"window": 0}}))
            .await
            .unwrap(),
        StatusCode::BAD_REQUEST,
        "invalid-request",
    )
    .await;
    let r = http
        .post(url(&s, "/v1/models/linear/explain/occlusion"))
        .json(&json!({"features": [1, 2, 3, 4]}))
        .send()
        .await
        .unwrap();
    problem(r, StatusCode::UNPROCESSABLE_ENTITY, "invalid-input").await;
    s.stop().await.unwrap();
}

/// Exact Shapley values of the region model's class-0 probability over a segment map, by
/// enumerating every coalition (missing segments are mid grey, as the service hides them).
fn exact_shapley(img: &image::GrayImage, segment_map: &[usize], m: usize) -> (Vec<f64>, f64, f64) {
    let runner = runner();
    let mut session = runner.session(&region_model()).unwrap();
    let coalitions = 1usize << m;
    let n = SIDE * SIDE;
    let mut values = Vec::with_capacity(coalitions);
    for chunk in (0..coalitions).collect::<Vec<_>>().chunks(256) {
        let mut data = Vec::with_capacity(chunk.len() * n);
        for &mask in chunk {
            for (i, p) in img.pixels().enumerate() {
                let on = mask >> segment_map[i] & 1 == 1;
                data.push(if on { p.0[0] as f32 / 255.0 } else { 128.0 / 255.0 });
            }
        }
        let (_, logits) = run_output(
            &mut session,
            &[("input", vec![chunk.len(), 1, SIDE, SIDE], data)],
            "logits",
        );
        for row in logits.chunks(2) {
            let (a, b) = (row[0] as f64, row[1] as f64);
            values.push(1.0 / (1.0 + (b - a).exp()));
        }
    }
    let fact = |k: usize| (1..=k).map(|v| v as f64).product::<f64>();
    let mut phi = vec![0f64; m];
    for (i, value) in phi.iter_mut().enumerate() {
        for mask in 0..coalitions {
            if mask >> i & 1 == 1 {
                continue;
            }
            let s = (mask as u32).count_ones() as usize;
            let weight = fact(s) * fact(m - s - 1) / fact(m);
            *value += weight * (values[mask | 1 << i] - values[mask]);
        }
    }
    (phi, values[0], values[coalitions - 1])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernel_shap_converges_to_exact_shapley_values_with_honest_errors() {
    let s = start_known_answer().await;
    let http = reqwest::Client::new();
    let (png, img) = noise_png(SIDE as u32, 6);
    let b64 = base64::engine::general_purpose::STANDARD.encode(&png);
    let ask = |samples: Value, seed: u64| {
        let http = http.clone();
        let b64 = b64.clone();
        let endpoint = url(&s, "/v1/models/region/explain/kernel-shap");
        async move {
            let body = json!({"image": b64, "target": 0, "seed": seed, "params": {"segments": 9, "samples": samples, "tolerance": 0.004}});
            let r = http.post(endpoint).json(&body).send().await.unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            r.json::<Value>().await.unwrap()
        }
    };
    let first = ask(json!(64), 1).await;
    let d = &first["details"];
    let m = d["segments"].as_u64().unwrap() as usize;
    assert!((2..=12).contains(&m), "{m} segments");
    let segment_map: Vec<usize> = d["segment_map"]["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    let (exact, v_empty, v_full) = exact_shapley(&img, &segment_map, m);
    // Efficiency is exact, and the base value is the fully hidden image's score.
    assert!(d["efficiency_gap"].as_f64().unwrap().abs() < 1e-9);
    assert!((d["base_value"].as_f64().unwrap() - v_empty).abs() < 1e-5);
    assert!((d["value"].as_f64().unwrap() - v_full).abs() < 1e-5);
    let rmse = |v: &Value| {
        let phi: Vec<f64> = v["details"]["shapley_values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        (phi.iter().zip(&exact).map(|(a, b)| (a - b).powi(2)).sum::<f64>() / m as f64).sqrt()
    };
    // Error falls as the samples grow; the standard errors cover the true errors.
    let mut covered = 0;
    let mut total = 0;
    let mut errors = Vec::new();
    for samples in [64usize, 256, 1024] {
        let mut sum = 0.0;
        for seed in 0..4u64 {
            let v = ask(json!(samples), 10 + seed).await;
            sum += rmse(&v);
            let phi = v["details"]["shapley_values"].as_array().unwrap();
            let se = v["details"]["standard_errors"].as_array().unwrap();
            for j in 0..m {
                total += 1;
                if (phi[j].as_f64().unwrap() - exact[j]).abs() <= 2.0 * se[j].as_f64().unwrap() + 1e-9 {
                    covered += 1;
                }
            }
        }
        errors.push(sum / 4.0);
    }
    assert!(errors[2] < errors[0] / 2.0, "RMSE by samples 64/256/1024: {errors:?}");
    let coverage = covered as f64 / total as f64;
    eprintln!("kernel-shap: {m} players, RMSE at 64/256/1024 samples {errors:?}, coverage within 2 SE {coverage:.3}");
    assert!(
        coverage >= 0.85,
        "only {coverage:.2} of the values lie within two standard errors"
    );
    // "auto" stops once every standard error is below the tolerance, with fewer rows than the default.
    let auto = ask(json!("auto"), 3).await;
    let drawn = auto["details"]["samples"].as_u64().unwrap() as usize;
    eprintln!("kernel-shap auto: {drawn} samples (default budget {})", 2 * m + 2048);
    assert!(drawn < 2 * m + 2048, "auto drew {drawn}");
    assert_eq!(
        auto["details"]["stopped"],
        "every standard error is below the tolerance"
    );
    assert!(auto["details"]["standard_errors"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e.as_f64().unwrap() < 0.004));
    s.stop().await.unwrap();
}

#[tokio::test]
async fn tabular_lime_weights_follow_the_linear_model() {
    let s = start_known_answer().await;
    let http = reqwest::Client::new();
    // Target b: weights -1, 0, 1, 3. Features 0 and 3 sit in their top quartile.
    let x = [1.5f32, -2.0, 0.5, 3.0];
    let body = json!({"features": x, "target": 1, "seed": 3, "params": {"samples": 2000}});
    let v = explain_json(&http, &s, "linear", "lime", body.clone()).await;
    let w = values(&v);
    let d = &v["details"];
    assert!(
        w[3] > 0.0 && w[3].abs() > w[0].abs() && w[3].abs() > w[2].abs(),
        "{w:?}"
    );
    assert!(w[0] < 0.0, "{w:?}");
    assert!(w[1].abs() < 0.05 * w[3], "a feature the model ignores gets ~0: {w:?}");
    assert!(d["conditions"][3].as_str().unwrap().starts_with("f3 > "), "{d}");
    assert!(d["r2"].as_f64().unwrap() > 0.5, "{d}");
    assert!(
        (d["kernel_width"].as_f64().unwrap() - 1.5).abs() < 1e-12,
        "0.75 sqrt(4)"
    );
    // Seeded, with honest errors: the fixed-sample answer is reproducible, and `auto` stops early.
    assert_eq!(
        explain_json(&http, &s, "linear", "lime", body).await["attributions"],
        v["attributions"]
    );
    let auto = explain_json(
        &http,
        &s,
        "linear",
        "lime",
        json!({"features": x, "target": 1, "params": {"samples": "auto", "tolerance": 0.2}}),
    )
    .await;
    let d = &auto["details"];
    assert_eq!(d["stopped"], "every standard error is below the tolerance", "{d}");
    assert!(d["samples"].as_u64().unwrap() < 2000, "{d}");
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tabular_kernel_shap_matches_the_linear_closed_form() {
    let s = start_known_answer().await;
    let http = reqwest::Client::new();
    let (_, w) = linear_model();
    let (_, rows) = linear_background();
    let x = [1.5f32, -2.0, 0.5, 3.0];
    // phi_i = w_i (x_i - E[x_i]) over the background, for target b (weights column 1).
    let v = explain_json(
        &http,
        &s,
        "linear",
        "kernel-shap",
        json!({"features": x, "target": 1, "params": {"samples": 256}}),
    )
    .await;
    let got = values(&v);
    for i in 0..4 {
        let mean: f32 = rows.iter().map(|r| r[i]).sum::<f32>() / rows.len() as f32;
        let expected = w[i * 2 + 1] * (x[i] - mean);
        assert!(
            (got[i] - expected).abs() < 1e-3,
            "feature {i}: {} vs {expected}",
            got[i]
        );
    }
    assert!(v["details"]["efficiency_gap"].as_f64().unwrap().abs() < 1e-9);
    assert_eq!(
        v["details"]["background"],
        json!({"rows": 20, "of": 20, "summary": "all rows"})
    );
    // Integrated Gradients from the background's mean row gives the same closed form on a linear model.
    let ig = explain_json(
        &http,
        &s,
        "linear",
        "integrated-gradients",
        json!({"features": x, "target": 1, "params": {"baseline": "mean"}}),
    )
    .await;
    let ig_values = values(&ig);
    for i in 0..4 {
        assert!(
            (ig_values[i] - got[i]).abs() < 1e-3,
            "feature {i}: IG {} vs SHAP {}",
            ig_values[i],
            got[i]
        );
    }
    // The answer names the features, largest first.
    assert_eq!(v["features"][0]["name"], "f3");
    // The bundled tabular model explains too, from its shipped background.
    let holdout: Value =
        serde_json::from_slice(&std::fs::read(root().join("tests/fixtures/breast_cancer_holdout.json")).unwrap())
            .unwrap();
    let features = holdout["cases"][0]["features"].clone();
    let v = explain_json(
        &http,
        &s,
        "breast-cancer",
        "kernel-shap",
        json!({"features": features, "params": {"samples": "auto", "tolerance": 0.02}}),
    )
    .await;
    assert_eq!(v["features"].as_array().unwrap().len(), 30);
    assert!(v["details"]["efficiency_gap"].as_f64().unwrap().abs() < 1e-9);
    // Its 100 background rows are summarised by k-means to the 20 asked for.
    assert_eq!(
        v["details"]["background"],
        json!({"rows": 20, "of": 100, "summary": "k-means"})
    );
    // As a picture: a bar chart of the largest attributions, red for positive, blue for negative.
    let r = http
        .post(url(&s, "/v1/models/breast-cancer/explain/kernel-shap"))
        .header("accept", "image/png")
        .json(&json!({"features": features, "params": {"samples": 256}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "image/png");
    let bytes = r.bytes().await.unwrap();
    let shots = root().join("target/screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    std::fs::write(shots.join("tabular-bars.png"), &bytes).unwrap();
    let img = image::load_from_memory(&bytes).unwrap().to_rgb8();
    assert_eq!(img.width(), 720);
    let count = |c: [u8; 3]| img.pixels().filter(|p| p.0 == c).count();
    assert!(count([255, 0, 81]) + count([0, 139, 251]) > 1000, "bars drawn");
    s.stop().await.unwrap();
}

/// Every deterministic gradient method whose plan fits a few gradient passes (so every method that
/// can explain the top prediction in one pass; the registry's capabilities and the service's
/// `max_samples` choose them, no list) gives the same answer for the default target, chosen inside
/// the backward graph, as for that class named; and the one-pass ones save exactly the forward
/// pass that ranks the classes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_top_prediction_is_explained_in_one_pass_with_the_same_answer() {
    let dir = temp_dir("one-pass-models");
    common::copy_bundled("fashion-cnn", &dir);
    // A one-pass method runs one gradient pass per target (guided Grad-CAM two): plans longer than
    // that (Integrated Gradients' path, extremal perturbation's iterations) are refused at once.
    const FEW: usize = 4;
    let s = start(explaind::config::Config {
        max_samples: FEW,
        ..test_config(&dir)
    })
    .await;
    let http = reqwest::Client::new();
    let png = std::fs::read(root().join("tests/fixtures/fashion/test_00.png")).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&png);
    let info: Value = http
        .get(url(&s, "/v1/models/fashion-cnn"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut one_pass = Vec::new();
    let mut checked = 0;
    for detail in info["method_details"].as_array().unwrap() {
        let method = detail["name"].as_str().unwrap();
        let caps = &detail["capabilities"];
        if caps["passes"] != "gradients"
            || caps["random"] == true
            || caps["examples"] == true
            || caps["decision"] == true
        {
            continue;
        }
        // PatternNet's patterns are fitted by its first request (a pass over the reference set).
        if method.starts_with("pattern-") {
            explain_json(&http, &s, "fashion-cnn", method, json!({"image": b64})).await;
        }
        // The default target: a one-pass method's backward graph chooses the top class itself.
        let r = http
            .post(url(&s, &format!("/v1/models/fashion-cnn/explain/{method}")))
            .json(&json!({"image": b64}))
            .send()
            .await
            .unwrap();
        if r.status() == StatusCode::UNPROCESSABLE_ENTITY {
            let problem: Value = r.json().await.unwrap();
            assert!(
                problem["detail"].as_str().unwrap().contains("(max_samples)"),
                "{method}: refused for another reason than its length: {problem}"
            );
            continue;
        }
        assert_eq!(r.status(), StatusCode::OK, "{method}");
        let top: Value = r.json().await.unwrap();
        checked += 1;
        let index = top["target"]["index"].as_u64().unwrap();
        // The same class named: a forward pass ranks, then the backward pass runs.
        let named = explain_json(&http, &s, "fashion-cnn", method, json!({"image": b64, "target": index})).await;
        assert_eq!(
            top["target"]["index"], named["target"]["index"],
            "{method}: same target"
        );
        assert_eq!(top["target"]["label"], named["target"]["label"], "{method}");
        // The score comes from the backward model's forward half: the same numbers, up to how ONNX
        // Runtime fuses that graph.
        let score = |v: &Value| v["target"]["score"].as_f64().unwrap();
        assert!((score(&top) - score(&named)).abs() < 1e-5, "{method}: same score");
        let (a, b) = (values(&top), values(&named));
        assert_eq!(a.len(), b.len());
        assert!(
            a.iter().zip(&b).all(|(x, y)| (x - y).abs() <= 1e-6 + 1e-5 * y.abs()),
            "{method}: the one-pass map differs"
        );
        let rows = |v: &Value| v["stats"]["model_rows"].as_u64().unwrap();
        match rows(&named).checked_sub(rows(&top)) {
            Some(1) => one_pass.push(method.to_string()),
            Some(0) => {}
            _ => panic!(
                "{method}: {} rows for the top class, {} named",
                rows(&top),
                rows(&named)
            ),
        }
    }
    // Saliency, gradient x input, LRP, guided backpropagation, DeconvNet and the three CAMs on
    // gradients: a method that loses its one pass fails here.
    assert!(checked >= 9, "only {checked} methods checked");
    assert!(one_pass.len() >= 8, "one pass for only {one_pass:?}");
    eprintln!("{checked} checked, one pass: {one_pass:?}");
    s.stop().await.unwrap();
}
