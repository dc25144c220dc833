//! Uncertainty on a real server: MC dropout against the closed form of a linear model, mutual
//! information against the dropout rate on the bundled CNN, test-time augmentation on models whose
//! symmetry is known, ensembles, predict's attached estimate and its audit record, bad input.

use crate::common;

use base64::Engine;
use common::*;
use explaind::onnx::builder::{Attr, GraphBuilder};
use reqwest::StatusCode;
use serde_json::{json, Value};

const FEATURES: usize = 8;
const P: f32 = 0.3;

/// y = Dropout(x, ratio 0.3) w + b: the export kept its Dropout node (inference mode).
fn dropout_linear(w: &[f32], b: f32) -> explaind::onnx::proto::ModelProto {
    let mut g = GraphBuilder::new("dropout-linear", 13);
    let x = g.input("input", &[-1, FEATURES as i64]);
    let ratio = g.constant("ratio", &[], &[P]);
    let dropped = g.node("Dropout", &[&x, &ratio], vec![]);
    let wn = g.constant("w", &[FEATURES as i64, 1], w);
    let bn = g.constant("b", &[1], &[b]);
    g.node("Gemm", &[&dropped, &wn, &bn], vec![]);
    g.rename_last_output("value");
    g.output("value", &[-1, 1]);
    g.build()
}

/// logits = [s, -s] with s = mean(x * mask) over an 8x8 image: `mask` picks what the model sees.
fn image_model(mask: &[f32]) -> explaind::onnx::proto::ModelProto {
    let mut g = GraphBuilder::new("image", 17);
    let x = g.input("input", &[-1, 1, 8, 8]);
    let m = g.constant("mask", &[1, 1, 8, 8], mask);
    let seen = g.node("Mul", &[&x, &m], vec![]);
    let gap = g.node("GlobalAveragePool", &[&seen], vec![]);
    let flat = g.node("Flatten", &[&gap], vec![("axis", Attr::Int(1))]);
    let fc = g.constant("fc", &[1, 2], &[4.0, -4.0]);
    g.node("Gemm", &[&flat, &fc], vec![]);
    g.rename_last_output("logits");
    g.output("logits", &[-1, 2]);
    g.build()
}

/// logits = x W over 3 features, 2 classes.
fn tabular(w: &[f32]) -> explaind::onnx::proto::ModelProto {
    let mut g = GraphBuilder::new("tab", 17);
    let x = g.input("input", &[-1, 3]);
    let wn = g.constant("w", &[3, 2], w);
    g.node("MatMul", &[&x, &wn], vec![]);
    g.rename_last_output("logits");
    g.output("logits", &[-1, 2]);
    g.build()
}

const IMAGE_MANIFEST: &str =
    "task = \"image-classification\"\nlabels = [\"bright\", \"dark\"]\n[image]\ncolor = \"grayscale\"\n";
const W: [f32; FEATURES] = [0.5, -1.0, 2.0, 0.25, -0.75, 1.5, 0.0, -2.0];
const X: [f32; FEATURES] = [1.0, 2.0, -0.5, 3.0, 1.5, -1.0, 4.0, 0.5];

async fn start_models() -> explaind::Service {
    let dir = temp_dir("uncertainty-models");
    write_model(
        &dir,
        "dropout-linear",
        &dropout_linear(&W, 0.7),
        "task = \"tabular-regression\"\n",
    );
    let all = vec![1f32; 64];
    let left: Vec<f32> = (0..64).map(|i| if i % 8 < 4 { 2.0 } else { 0.0 }).collect();
    write_model(&dir, "symmetric", &image_model(&all), IMAGE_MANIFEST);
    write_model(&dir, "left-half", &image_model(&left), IMAGE_MANIFEST);
    let tab = "task = \"tabular-classification\"\nlabels = [\"a\", \"b\"]\n";
    write_model(
        &dir,
        "tab-a",
        &tabular(&[1.0, -1.0, 0.5, 0.0, -0.5, 2.0]),
        &format!("{tab}ensemble = [\"tab-b\"]\n"),
    );
    write_model(&dir, "tab-b", &tabular(&[-1.0, 1.0, 0.5, 0.5, 1.0, -2.0]), tab);
    for m in ["fashion-cnn", "breast-cancer-forest"] {
        common::copy_bundled(m, &dir);
    }
    let mut config = test_config(&dir);
    config.max_samples = 4096;
    start(config).await
}

async fn post(s: &explaind::Service, model: &str, body: Value) -> reqwest::Response {
    post_json(s, &format!("/v1/models/{model}/uncertainty"), &body).await
}

async fn ok(s: &explaind::Service, model: &str, body: Value) -> Value {
    ok_json(post(s, model, body).await).await
}

fn png(pixels: &[u8], side: u32) -> String {
    let img = image::GrayImage::from_raw(side, side, pixels.to_vec()).unwrap();
    let mut bytes = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)
        .unwrap();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn fashion_png(i: usize) -> String {
    let bytes = std::fs::read(root().join(format!("tests/fixtures/fashion/test_{i:02}.png"))).unwrap();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mc_dropout_on_a_linear_model_has_the_closed_form_mean_and_variance() {
    let s = start_models().await;
    let samples = 4000usize;
    let v = ok(
        &s,
        "dropout-linear",
        json!({"features": X, "params": {"samples": samples}, "seed": 5}),
    )
    .await;
    let u = &v["uncertainty"];
    assert_eq!(u["setup"]["sites"][0]["origin"], "dropout-node", "{u}");
    assert!(
        (f(&u["setup"]["sites"][0]["p"]) - P as f64).abs() < 1e-6,
        "the graph's own ratio"
    );
    assert_eq!(u["setup"]["samples"], samples);
    // Each term a_i = w_i x_i is kept (scaled by 1/(1-p)) or dropped: mean a_i, variance a_i^2 p/(1-p).
    let p = P as f64;
    let a: Vec<f64> = W.iter().zip(X).map(|(w, x)| (*w as f64) * (x as f64)).collect();
    let mean: f64 = a.iter().sum::<f64>() + 0.7;
    let var: f64 = a.iter().map(|a| a * a * p / (1.0 - p)).sum();
    // Fourth central moment of the sum (cumulants add): for the standard error of the variance.
    let kappa4: f64 = a
        .iter()
        .map(|a| {
            let (up, down) = (a * p / (1.0 - p), -a);
            let m2 = (1.0 - p) * up.powi(2) + p * down.powi(2);
            let m4 = (1.0 - p) * up.powi(4) + p * down.powi(4);
            m4 - 3.0 * m2 * m2
        })
        .sum();
    let mu4 = kappa4 + 3.0 * var * var;
    let t = samples as f64;
    let (got_mean, got_std) = (f(&u["mean"][0]), f(&u["std"][0]));
    let se_mean = (var / t).sqrt();
    let se_var = ((mu4 - var * var) / t).sqrt();
    assert!(
        (got_mean - mean).abs() < 4.0 * se_mean,
        "mean {got_mean} vs {mean} (se {se_mean})"
    );
    assert!(
        (got_std * got_std - var).abs() < 4.0 * se_var,
        "variance {} vs {var} (se {se_var})",
        got_std * got_std
    );
    assert!(u.get("mutual_information").is_none(), "regression: no entropies");
    // The same seed gives the same bytes; another seed another estimate; p = 0 none at all.
    let again = ok(
        &s,
        "dropout-linear",
        json!({"features": X, "params": {"samples": samples}, "seed": 5}),
    )
    .await;
    assert_eq!(again["uncertainty"], v["uncertainty"]);
    let other = ok(
        &s,
        "dropout-linear",
        json!({"features": X, "params": {"samples": 50}, "seed": 6}),
    )
    .await;
    assert_ne!(other["uncertainty"]["mean"], v["uncertainty"]["mean"]);
    let none = ok(
        &s,
        "dropout-linear",
        json!({"features": X, "params": {"samples": 10, "p": 0.0}}),
    )
    .await;
    assert!(f(&none["uncertainty"]["std"][0]) < 1e-9, "{none}");
    assert!((f(&none["uncertainty"]["mean"][0]) - mean).abs() < 1e-4);
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_information_is_zero_without_dropout_and_grows_with_p_on_the_bundled_cnn() {
    let s = start_models().await;
    let instances: Vec<Value> = (0..20).map(|i| json!({"image": fashion_png(i)})).collect();
    let mut means = Vec::new();
    for p in [0.0, 0.1, 0.3, 0.6] {
        let body = json!({"instances": instances, "params": {"samples": 64, "p": p}, "seed": 11});
        let v = ok(&s, "fashion-cnn", body).await;
        let list = v["instances"].as_array().unwrap();
        assert_eq!(list.len(), 20);
        let site = &list[0]["uncertainty"]["setup"]["sites"][0];
        assert_eq!(
            site["origin"], "last-linear",
            "fashion-cnn has no Dropout: the mask goes before its Gemm"
        );
        let mi: Vec<f64> = list
            .iter()
            .map(|i| f(&i["uncertainty"]["mutual_information"]))
            .collect();
        for i in list {
            let u = &i["uncertainty"];
            let sum: f64 = u["mean"].as_array().unwrap().iter().map(f).sum();
            assert!((sum - 1.0).abs() < 1e-6, "mean probabilities sum to 1");
            let (h, e, m) = (
                f(&u["predictive_entropy"]),
                f(&u["expected_entropy"]),
                f(&u["mutual_information"]),
            );
            assert!(
                (h - e - m).abs() < 1e-9 && m >= 0.0,
                "BALD = H[mean p] - mean H[p_t]: {u}"
            );
        }
        means.push(mi.iter().sum::<f64>() / mi.len() as f64);
    }
    assert!(means[0].abs() < 1e-9, "no dropout, no disagreement: {means:?}");
    assert!(
        means.windows(2).all(|w| w[1] > w[0]),
        "mean mutual information grows with p: {means:?}"
    );
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_time_augmentation_agrees_on_a_symmetric_model_and_not_on_one_that_reads_half() {
    let s = start_models().await;
    // Bright left half, dark right half.
    let pixels: Vec<u8> = (0..64).map(|i| if i % 8 < 4 { 230 } else { 10 }).collect();
    let image = png(&pixels, 8);
    for transforms in ["hflip", "d4"] {
        let body =
            json!({"image": image, "method": "tta", "params": {"transforms": transforms}, "include": ["samples"]});
        let sym = ok(&s, "symmetric", body.clone()).await;
        let u = &sym["uncertainty"];
        assert!(f(&u["mutual_information"]) < 1e-6, "{transforms}: {u}");
        assert!(f(&u["std"][0]) < 1e-6);
        let expected = if transforms == "hflip" { 2 } else { 8 };
        assert_eq!(u["samples"].as_array().unwrap().len(), expected);
        let half = ok(&s, "left-half", body).await;
        let u = &half["uncertainty"];
        assert!(
            f(&u["mutual_information"]) > 0.05,
            "{transforms}: the mirror hides what it reads: {u}"
        );
        let samples = u["samples"].as_array().unwrap();
        assert_ne!(samples[0], samples[1], "the identity and the mirror disagree");
    }
    let zoom =
        json!({"image": image, "method": "tta", "params": {"transforms": "multiscale", "scales": [0.8, 1.0, 1.25]}});
    let v = ok(&s, "symmetric", zoom).await;
    assert_eq!(v["uncertainty"]["setup"]["views"].as_array().unwrap().len(), 3);
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ensemble_averages_its_members_and_mismatched_members_are_refused_at_start() {
    let s = start_models().await;
    let x = [0.5f64, -1.0, 2.0];
    let v = ok(
        &s,
        "tab-a",
        json!({"features": x, "method": "ensemble", "include": ["samples"]}),
    )
    .await;
    let u = &v["uncertainty"];
    assert_eq!(u["setup"]["members"], json!(["tab-a", "tab-b"]));
    let softmax = |w: [f64; 6]| {
        let l0 = x[0] * w[0] + x[1] * w[2] + x[2] * w[4];
        let l1 = x[0] * w[1] + x[1] * w[3] + x[2] * w[5];
        let m = l0.max(l1);
        let (e0, e1) = ((l0 - m).exp(), (l1 - m).exp());
        [e0 / (e0 + e1), e1 / (e0 + e1)]
    };
    let a = softmax([1.0, -1.0, 0.5, 0.0, -0.5, 2.0]);
    let b = softmax([-1.0, 1.0, 0.5, 0.5, 1.0, -2.0]);
    for c in 0..2 {
        assert!((f(&u["mean"][c]) - (a[c] + b[c]) / 2.0).abs() < 1e-6, "{u}");
        assert!((f(&u["samples"][1][c]) - b[c]).abs() < 1e-6);
    }
    problem(
        post(&s, "tab-b", json!({"features": x, "method": "ensemble"})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "unsupported-model",
    )
    .await;
    s.stop().await.unwrap();

    let dir = temp_dir("bad-ensemble");
    write_model(
        &dir,
        "a",
        &tabular(&[1.0; 6]),
        "task = \"tabular-classification\"\nlabels = [\"a\", \"b\"]\nensemble = [\"b\"]\n",
    );
    write_model(
        &dir,
        "b",
        &tabular(&[1.0; 6]),
        "task = \"tabular-classification\"\nlabels = [\"x\", \"y\"]\n",
    );
    let err = explaind::runtime::Registry::load_dir(&dir, true)
        .unwrap_err()
        .to_string();
    assert!(err.contains("ensemble") && err.contains("other labels"), "{err}");
    // Without strict_models the bad ensemble is listed with the same reason and the member serves.
    let registry = explaind::runtime::Registry::load_dir(&dir, false).unwrap();
    assert_eq!(registry.names(), ["b"]);
    let why = &registry.failed()["a"];
    assert!(
        why.starts_with("a/model.toml: ensemble") && why.contains("other labels"),
        "{why}"
    );
    std::fs::write(
        dir.join("a/model.toml"),
        "task = \"tabular-classification\"\nlabels = [\"a\", \"b\"]\nensemble = [\"c\"]\n",
    )
    .unwrap();
    let err = explaind::runtime::Registry::load_dir(&dir, true)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no model named `c`"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn predict_attaches_the_estimate_to_the_rows_meeting_when_and_the_audit_record_keeps_the_figures() {
    let s = start_models().await;
    let instances: Vec<Value> = (0..4).map(|i| json!({"image": fashion_png(i)})).collect();
    let plain = ok_predict(&s, json!({"instances": instances})).await;
    let tops: Vec<f64> = plain["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| f(&i["predictions"][0]["score"]))
        .collect();
    let threshold = 0.9;
    let body = json!({"instances": instances, "audit": true,
                      "uncertainty": {"seed": 3, "params": {"samples": 30, "explain_method": "saliency"}, "when": {"min_score": threshold}}});
    let v = ok_predict(&s, body).await;
    let rows = v["instances"].as_array().unwrap();
    for (row, top) in rows.iter().zip(&tops) {
        assert_eq!(
            row.get("uncertainty").is_some(),
            *top >= threshold,
            "estimate only where `when` holds"
        );
        if let Some(u) = row.get("uncertainty") {
            assert_eq!(u["setup"]["seed"], 3);
            assert_eq!(u["setup"]["samples"], 30);
        }
    }
    assert!(rows.iter().any(|r| r.get("uncertainty").is_some()), "{tops:?}");
    // The same estimate as the endpoint's, for the same seed.
    let first = rows.iter().position(|r| r.get("uncertainty").is_some()).unwrap();
    let alone = ok(
        &s,
        "fashion-cnn",
        json!({"image": fashion_png(first), "seed": 3, "params": {"samples": 30, "explain_method": "saliency"}}),
    )
    .await;
    assert_eq!(alone["uncertainty"], rows[first]["uncertainty"]);
    let id = v["audit_record"]["id"].as_str().unwrap();
    let record: Value = reqwest::get(url(&s, &format!("/v1/audit/records/{id}")))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let recorded = &record["results"][first]["uncertainty"];
    assert_eq!(
        recorded["mutual_information"], rows[first]["uncertainty"]["mutual_information"],
        "{record}"
    );
    assert_eq!(recorded["setup"]["seed"], 3);
    assert_eq!(
        rows[first]["uncertainty"]["explanation_spread"]["shape"],
        json!([28, 28])
    );
    assert!(
        recorded["explanation_spread"]["max_std"].as_f64().unwrap() > 0.0,
        "{recorded}"
    );
    assert!(
        recorded["explanation_spread"].get("std").is_none(),
        "the record keeps no maps"
    );
    // The standalone endpoint's record has its own kind.
    let audited = ok(
        &s,
        "fashion-cnn",
        json!({"image": fashion_png(0), "audit": true, "params": {"samples": 5}}),
    )
    .await;
    let id = audited["audit_record"]["id"].as_str().unwrap();
    let record: Value = reqwest::get(url(&s, &format!("/v1/audit/records/{id}")))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(record["kind"], "uncertainty", "{record}");
    assert!(
        record["results"][0]["uncertainty"]["variation_ratio"].is_number(),
        "{record}"
    );
    s.stop().await.unwrap();
}

async fn ok_predict(s: &explaind::Service, body: Value) -> Value {
    ok_json(post_json(s, "/v1/models/fashion-cnn/predict", &body).await).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_and_multipart_bodies_work_and_bad_parameters_get_problems_naming_them() {
    let s = start_models().await;
    let bytes = std::fs::read(root().join("tests/fixtures/fashion/test_00.png")).unwrap();
    let raw: Value = reqwest::Client::new()
        .post(url(&s, "/v1/models/fashion-cnn/uncertainty?samples=7&seed=2"))
        .header("content-type", "image/png")
        .body(bytes.clone())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(raw["uncertainty"]["setup"]["samples"], 7, "{raw}");
    let form = reqwest::multipart::Form::new()
        .part(
            "image",
            reqwest::multipart::Part::bytes(bytes.clone()).file_name("a.png"),
        )
        .part("image", reqwest::multipart::Part::bytes(bytes).file_name("b.png"))
        .text("request", json!({"method": "tta"}).to_string());
    let multi: Value = reqwest::Client::new()
        .post(url(&s, "/v1/models/fashion-cnn/uncertainty"))
        .multipart(form)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(multi["instances"].as_array().map(Vec::len), Some(2), "{multi}");

    let img = fashion_png(0);
    let bad = [
        (
            json!({"image": img, "params": {"p": 1.0}}),
            StatusCode::BAD_REQUEST,
            "invalid-request",
            "p must be",
        ),
        (
            json!({"image": img, "params": {"samples": 0}}),
            StatusCode::BAD_REQUEST,
            "invalid-request",
            "samples",
        ),
        (
            json!({"image": img, "params": {"samples": 5000}}),
            StatusCode::BAD_REQUEST,
            "invalid-request",
            "max_samples",
        ),
        (
            json!({"image": img, "method": "tta", "params": {"samples": 3}}),
            StatusCode::BAD_REQUEST,
            "invalid-request",
            "mc-dropout only",
        ),
        (
            json!({"image": img, "method": "tta", "params": {"transforms": "multiscale", "scales": [3.0]}}),
            StatusCode::BAD_REQUEST,
            "invalid-request",
            "[0.5, 2]",
        ),
        (
            json!({"image": img, "method": "bayes"}),
            StatusCode::BAD_REQUEST,
            "invalid-request",
            "bayes",
        ),
        (
            json!({"image": img, "params": {"dropout_layers": ["nope"]}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-input",
            "`nope`",
        ),
    ];
    for (body, status, slug, words) in bad {
        let p = problem(post(&s, "fashion-cnn", body.clone()).await, status, slug).await;
        assert!(p["detail"].as_str().unwrap().contains(words), "{body}: {p}");
    }
    let p = problem(
        post(&s, "dropout-linear", json!({"features": X, "method": "tta"})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "unsupported-model",
    )
    .await;
    assert!(p["detail"].as_str().unwrap().contains("image"), "{p}");
    let forest: Vec<f64> = vec![1.0; 30];
    let p = problem(
        post(&s, "breast-cancer-forest", json!({"features": forest})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "unsupported-model",
    )
    .await;
    assert!(p["detail"].as_str().unwrap().contains("no dropout masks"), "{p}");
    s.stop().await.unwrap();
}

/// Mean and variance of a two-point variable (`up` with probability 1 - p, else `down`) and the
/// standard errors of their estimates over `t` samples.
fn two_point(up: f64, down: f64, p: f64, t: f64) -> (f64, f64, f64, f64) {
    let mean = (1.0 - p) * up + p * down;
    let m2 = (1.0 - p) * (up - mean).powi(2) + p * (down - mean).powi(2);
    let m4 = (1.0 - p) * (up - mean).powi(4) + p * (down - mean).powi(4);
    (mean, m2, (m2 / t).sqrt(), ((m4 - m2 * m2) / t).sqrt())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_explanation_spread_has_the_closed_form_on_a_linear_model_and_is_plain_saliency_without_dropout() {
    let s = start_models().await;
    let samples = 4000;
    let body = json!({"features": X, "seed": 9, "params": {"samples": samples, "explain_method": "saliency"}});
    let v = ok(&s, "dropout-linear", body).await;
    let spread = &v["uncertainty"]["explanation_spread"];
    assert_eq!(v["uncertainty"]["setup"]["explain_method"], "saliency");
    assert_eq!(spread["shape"], json!([FEATURES]));
    // Each sample's gradient is w * mask: |w_i| / (1 - p) kept, 0 dropped.
    let p = P as f64;
    for i in 0..FEATURES {
        let w = (W[i] as f64).abs();
        let (mean, var, se_mean, se_var) = two_point(w / (1.0 - p), 0.0, p, samples as f64);
        let (got_mean, got_std) = (f(&spread["mean"][i]), f(&spread["std"][i]));
        assert!(
            (got_mean - mean).abs() <= 4.0 * se_mean + 1e-6,
            "feature {i}: mean {got_mean} vs {mean}"
        );
        assert!(
            (got_std * got_std - var).abs() <= 4.0 * se_var + 1e-6,
            "feature {i}: variance {} vs {var}",
            got_std * got_std
        );
    }
    let gxi =
        json!({"features": X, "seed": 9, "params": {"samples": 500, "p": 0.0, "explain_method": "gradient-x-input"}});
    let v = ok(&s, "dropout-linear", gxi).await;
    for i in 0..FEATURES {
        let got = f(&v["uncertainty"]["explanation_spread"]["mean"][i]);
        assert!(
            (got - (W[i] * X[i]) as f64).abs() < 1e-5,
            "gradient x input at p = 0: {got}"
        );
    }
    // Without dropout every sample's map is the plain saliency map.
    let image = fashion_png(3);
    let body = json!({"image": image, "params": {"samples": 4, "p": 0.0, "explain_method": "saliency"}});
    let v = ok(&s, "fashion-cnn", body).await;
    let spread = &v["uncertainty"]["explanation_spread"];
    let plain: Value = post_json(&s, "/v1/models/fashion-cnn/explain/saliency", &json!({"image": image}))
        .await
        .json()
        .await
        .unwrap();
    let plain = plain["attributions"]["values"].as_array().unwrap();
    assert_eq!(spread["mean"].as_array().unwrap().len(), plain.len());
    for (a, b) in spread["mean"].as_array().unwrap().iter().zip(plain) {
        assert!((f(a) - f(b)).abs() < 1e-6, "{a} vs {b}");
    }
    assert!(spread["std"].as_array().unwrap().iter().all(|v| f(v) < 1e-6));
    // With dropout the map moves, and the PNG draws where.
    let body = json!({"image": image, "params": {"samples": 16, "explain_method": "saliency"}});
    let v = ok(&s, "fashion-cnn", body.clone()).await;
    let std = v["uncertainty"]["explanation_spread"]["std"].as_array().unwrap();
    assert!(std.iter().any(|v| f(v) > 1e-4), "dropout moves the map");
    let png = reqwest::Client::new()
        .post(url(&s, "/v1/models/fashion-cnn/uncertainty"))
        .header("accept", "image/png")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(png.status(), StatusCode::OK);
    assert_eq!(png.headers()["content-type"], "image/png");
    let img = image::load_from_memory(&png.bytes().await.unwrap()).unwrap();
    assert_eq!((img.width(), img.height()), (28, 28));
    let p = problem(
        post(&s, "fashion-cnn", json!({"image": image, "format": "png"})).await,
        StatusCode::BAD_REQUEST,
        "invalid-request",
    )
    .await;
    assert!(p["detail"].as_str().unwrap().contains("explain_method"), "{p}");
    s.stop().await.unwrap();
}
