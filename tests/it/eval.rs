//! Explanation metrics on a real server: every metric on fixed maps and fixed models against an
//! independent NumPy implementation of its published formula (scripts/eval_reference.py, run with
//! the test virtualenv's Python), mu-fidelity against the exactness of a linear model, a map inside
//! the region a model reads against one outside it, metrics inside explain and predict answers and
//! their audit records, maps taken from audit records, and bad input.

use crate::common;

use std::io::Write;
use std::process::{Command, Stdio};

use base64::Engine;
use common::*;
use explaind::onnx::builder::{Attr, GraphBuilder};
use reqwest::StatusCode;
use serde_json::{json, Value};

const SIDE: usize = 8;
const FC: f32 = 4.0;

/// logits = [z, -z], z = FC * mean(x * mask) over an 8x8 grayscale image.
fn image_model(mask: &[f32]) -> explaind::onnx::proto::ModelProto {
    let mut g = GraphBuilder::new("image", 17);
    let x = g.input("input", &[-1, 1, SIDE as i64, SIDE as i64]);
    let m = g.constant("mask", &[1, 1, SIDE as i64, SIDE as i64], mask);
    let seen = g.node("Mul", &[&x, &m], vec![]);
    let gap = g.node("GlobalAveragePool", &[&seen], vec![]);
    let flat = g.node("Flatten", &[&gap], vec![("axis", Attr::Int(1))]);
    let fc = g.constant("fc", &[1, 2], &[FC, -FC]);
    g.node("Gemm", &[&flat, &fc], vec![]);
    g.rename_last_output("logits");
    g.output("logits", &[-1, 2]);
    g.build()
}

const W: [[f32; 2]; 4] = [[0.5, -0.25], [-1.0, 1.0], [2.0, 1.5], [0.0, 3.0]];
const B: [f32; 2] = [0.3, -0.2];

/// logits = x W + b over 4 features.
fn linear_model() -> explaind::onnx::proto::ModelProto {
    let mut g = GraphBuilder::new("linear", 17);
    let x = g.input("input", &[-1, 4]);
    let flat: Vec<f32> = W.iter().flatten().copied().collect();
    let w = g.constant("w", &[4, 2], &flat);
    let b = g.constant("b", &[2], &B);
    let mm = g.node("MatMul", &[&x, &w], vec![]);
    g.node("Add", &[&mm, &b], vec![]);
    g.rename_last_output("logits");
    g.output("logits", &[-1, 2]);
    g.build()
}

const IMAGE_MANIFEST: &str =
    "task = \"image-classification\"\nlabels = [\"a\", \"b\"]\n[image]\ncolor = \"grayscale\"\n";
const LINEAR_MANIFEST: &str =
    "task = \"tabular-classification\"\nlabels = [\"a\", \"b\"]\n[tabular]\nfeatures = [\"f0\", \"f1\", \"f2\", \"f3\"]\n";

/// A mask that reads the left half twice as hard as nothing else.
fn left_mask() -> Vec<f32> {
    (0..SIDE * SIDE)
        .map(|i| if i % SIDE < SIDE / 2 { 2.0 } else { 0.0 })
        .collect()
}

/// A seeded mask with varied weights (ties impossible).
fn varied_mask() -> Vec<f32> {
    let mut rng = Rng::new(3);
    (0..SIDE * SIDE).map(|_| rng.uniform(-1.0, 2.0)).collect()
}

async fn start_models() -> explaind::Service {
    let dir = temp_dir("eval-models");
    write_model(&dir, "varied", &image_model(&varied_mask()), IMAGE_MANIFEST);
    write_model(&dir, "left-half", &image_model(&left_mask()), IMAGE_MANIFEST);
    write_model(&dir, "linear", &linear_model(), LINEAR_MANIFEST);
    common::copy_bundled("fashion-cnn", &dir);
    let mut config = test_config(&dir);
    config.audit = explaind::config::AuditMode::Off;
    start(config).await
}

/// A seeded grayscale image, as PNG base64, and its pixels / 255 (the model's preprocessed input).
fn image(seed: u64) -> (String, Vec<f64>) {
    let mut rng = Rng::new(seed);
    let pixels: Vec<u8> = (0..SIDE * SIDE).map(|_| rng.uniform(0.0, 255.0) as u8).collect();
    let img = image::GrayImage::from_raw(SIDE as u32, SIDE as u32, pixels.clone()).unwrap();
    let mut bytes = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)
        .unwrap();
    let x = pixels.iter().map(|&p| f64::from(p as f32 * (1.0 / 255.0))).collect();
    (base64::engine::general_purpose::STANDARD.encode(bytes), x)
}

fn reference(case: &Value) -> Value {
    let python = test_venv("python");
    assert!(python.exists(), "{} is missing: run `make test`", python.display());
    let mut child = Command::new(python)
        .arg(root().join("scripts/eval_reference.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(case.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    serde_json::from_slice(&out.stdout).unwrap()
}

async fn evaluate(s: &explaind::Service, model: &str, body: Value) -> reqwest::Response {
    post_json(s, &format!("/v1/models/{model}/evaluate"), &body).await
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

fn metric<'a>(answer: &'a Value, name: &str) -> &'a Value {
    answer["evaluation"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["metric"] == name)
        .unwrap_or_else(|| panic!("no {name} in {answer}"))
}

fn all_metrics(steps: usize, flip: usize) -> Value {
    json!([
        {"metric": "deletion", "steps": steps, "substrate": "black"},
        {"metric": "insertion", "steps": steps, "substrate": "black"},
        {"metric": "pixel_flipping", "features_in_step": flip, "substrate": "black"},
        "sparseness",
        "complexity",
        {"metric": "mu_fidelity", "nr_runs": 50, "substrate": "black"},
    ])
}

/// Checks every metric but mu-fidelity against the NumPy reference (1e-6).
fn check_against_reference(answer: &Value, case: Value) {
    let expected = reference(&case);
    for name in ["deletion", "insertion", "pixel_flipping", "sparseness", "complexity"] {
        let got = metric(answer, name);
        let want = &expected[name];
        assert!(
            (f(&got["value"]) - f(&want["value"])).abs() < 1e-6,
            "{name}: {} vs NumPy {}",
            got["value"],
            want["value"]
        );
        if let Some(curve) = want["curve"].as_array() {
            let ours = got["curve"].as_array().unwrap();
            assert_eq!(ours.len(), curve.len(), "{name} curve length");
            for (a, b) in ours.iter().zip(curve) {
                assert!((f(a) - f(b)).abs() < 1e-6, "{name} curve: {a} vs {b}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_equals_an_independent_numpy_implementation_and_mu_fidelity_is_exact_on_linear_models() {
    let s = start_models().await;
    let mask = varied_mask();
    let (png, x) = image(5);
    let mut rng = Rng::new(8);
    let map: Vec<f32> = (0..SIDE * SIDE).map(|_| rng.uniform(-1.0, 1.0)).collect();
    for (steps, flip, target) in [(30, 1, 0usize), (7, 5, 1)] {
        let body = json!({"image": png, "attributions": {"shape": [SIDE, SIDE], "values": map},
                          "target": target, "seed": 1, "evaluate": all_metrics(steps, flip)});
        let answer = ok_json(evaluate(&s, "varied", body).await).await;
        assert_eq!(answer["target"]["index"], target);
        let case = json!({"model": {"kind": "image", "mask": mask, "fc": FC}, "x": x, "map": map,
                          "target": target, "steps": steps, "features_in_step": flip});
        check_against_reference(&answer, case);
        assert_eq!(
            metric(&answer, "deletion")["passes"],
            metric(&answer, "deletion")["curve"].as_array().unwrap().len()
        );
    }
    // The target logit is linear in the input and the substrate is 0: a map of each pixel's exact
    // contribution makes every subset's attribution sum equal its score drop.
    let exact: Vec<f32> = mask
        .iter()
        .zip(&x)
        .map(|(m, x)| (FC as f64 * *m as f64 * x / (SIDE * SIDE) as f64) as f32)
        .collect();
    let body = json!({"image": png, "attributions": {"shape": [SIDE, SIDE], "values": exact}, "target": 0,
                      "evaluate": [{"metric": "mu_fidelity", "nr_runs": 40}]});
    let answer = ok_json(evaluate(&s, "varied", body).await).await;
    assert!(
        (f(&metric(&answer, "mu_fidelity")["value"]) - 1.0).abs() < 1e-4,
        "{answer}"
    );
    let negated: Vec<f32> = exact.iter().map(|v| -v).collect();
    let body = json!({"image": png, "attributions": {"shape": [SIDE, SIDE], "values": negated}, "target": 0,
                      "evaluate": [{"metric": "mu_fidelity", "nr_runs": 40}]});
    let answer = ok_json(evaluate(&s, "varied", body).await).await;
    assert!(
        (f(&metric(&answer, "mu_fidelity")["value"]) + 1.0).abs() < 1e-4,
        "{answer}"
    );

    // Tabular: the linear model, features as the players.
    let features = [1.5f32, -2.0, 0.5, 1.0];
    let tab_map = [0.4f32, -1.2, 0.9, 0.1];
    let body = json!({"features": features, "attributions": {"shape": [4], "values": tab_map}, "target": 1,
                      "evaluate": [{"metric": "deletion", "steps": 4, "substrate": "black"},
                                   {"metric": "insertion", "steps": 4, "substrate": "black"},
                                   {"metric": "pixel_flipping", "features_in_step": 1, "substrate": "black"},
                                   "sparseness", "complexity"]});
    let answer = ok_json(evaluate(&s, "linear", body).await).await;
    let case = json!({"model": {"kind": "linear", "w": W, "b": B}, "x": features, "map": tab_map,
                      "target": 1, "steps": 4, "features_in_step": 1});
    check_against_reference(&answer, case);
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_map_inside_the_region_the_model_reads_scores_better_than_one_outside() {
    let s = start_models().await;
    let (png, _) = image(9);
    let inside: Vec<f32> = left_mask().iter().map(|m| m + 0.01).collect();
    let outside: Vec<f32> = left_mask().iter().map(|m| 2.01 - m).collect();
    let mut scores = Vec::new();
    for map in [&inside, &outside] {
        let body = json!({"image": png, "attributions": {"shape": [SIDE, SIDE], "values": map}, "target": 0,
                          "evaluate": ["deletion", {"metric": "insertion", "substrate": "black"}]});
        let answer = ok_json(evaluate(&s, "left-half", body).await).await;
        scores.push((
            f(&metric(&answer, "deletion")["value"]),
            f(&metric(&answer, "insertion")["value"]),
        ));
    }
    assert!(scores[0].0 < scores[1].0, "deletion falls sooner inside: {scores:?}");
    assert!(scores[0].1 > scores[1].1, "insertion rises sooner inside: {scores:?}");
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_and_predict_answers_carry_metrics_and_a_recorded_explanation_can_be_evaluated() {
    let s = start_models().await;
    let fashion = base64::engine::general_purpose::STANDARD
        .encode(std::fs::read(root().join("tests/fixtures/fashion/test_00.png")).unwrap());
    let answer = ok_json(
        post_json(
            &s,
            "/v1/models/fashion-cnn/explain/saliency",
            &json!({"image": fashion, "evaluate": ["deletion", "insertion", "sparseness"]}),
        )
        .await,
    )
    .await;
    let deletion = metric(&answer, "deletion");
    assert_eq!(deletion["curve"].as_array().unwrap().len(), 31);
    assert_eq!(deletion["params"]["steps"], 30);
    assert_eq!(
        answer["stats"]["model_rows"],
        1 + 31 + 31,
        "the metrics' passes are counted"
    );
    // The same map given back to /evaluate gives the same figures.
    let map = answer["attributions"]["values"].clone();
    let again = ok_json(
        evaluate(
            &s,
            "fashion-cnn",
            json!({"image": fashion, "attributions": {"shape": [28, 28], "values": map},
               "evaluate": ["deletion", "insertion", "sparseness"]}),
        )
        .await,
    )
    .await;
    for name in ["deletion", "insertion", "sparseness"] {
        assert!(
            (f(&metric(&again, name)["value"]) - f(&metric(&answer, name)["value"])).abs() < 1e-9,
            "{name}"
        );
    }
    // Predict's attached explanation measures too.
    let predicted = ok_json(
        post_json(
            &s,
            "/v1/models/fashion-cnn/predict",
            &json!({"image": fashion, "explain": {"method": "gradient-x-input", "evaluate": ["complexity"]}}),
        )
        .await,
    )
    .await;
    assert!(
        metric(&predicted["explanation"], "complexity")["value"].is_number(),
        "{predicted}"
    );

    // A recorded tabular explanation keeps its attributions: evaluate it by its record.
    let features = json!([1.5, -2.0, 0.5, 1.0]);
    let explained = ok_json(
        post_json(
            &s,
            "/v1/models/linear/explain/gradient-x-input",
            &json!({"features": features, "audit": true, "evaluate": ["deletion"]}),
        )
        .await,
    )
    .await;
    let record = explained["audit_record"]["id"].as_str().unwrap().to_string();
    let kept: Value = reqwest::get(url(&s, &format!("/v1/audit/records/{record}")))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(kept["targets"][0]["evaluation"]["deletion"].is_number(), "{kept}");
    let by_record = ok_json(
        evaluate(
            &s,
            "linear",
            json!({"features": features, "explanation_record": record, "evaluate": ["deletion"]}),
        )
        .await,
    )
    .await;
    assert!((f(&metric(&by_record, "deletion")["value"]) - f(&metric(&explained, "deletion")["value"])).abs() < 1e-9);
    let p = problem(
        evaluate(
            &s,
            "varied",
            json!({"explanation_record": record, "evaluate": ["deletion"]}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid-input",
    )
    .await;
    assert!(p["detail"].as_str().unwrap().contains("explains model `linear`"), "{p}");
    problem(
        evaluate(
            &s,
            "linear",
            json!({"features": features, "explanation_record": "no-such-id", "evaluate": ["deletion"]}),
        )
        .await,
        StatusCode::NOT_FOUND,
        "not-found",
    )
    .await;
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_metrics_and_parameters_out_of_bounds_get_problems_naming_them() {
    let s = start_models().await;
    let (png, _) = image(1);
    let map = json!({"shape": [SIDE, SIDE], "values": vec![0.5f32; SIDE * SIDE]});
    let cases = [
        (
            json!(["faithfulness"]),
            StatusCode::BAD_REQUEST,
            "invalid-request",
            "no metric `faithfulness`",
        ),
        (
            json!([{"metric": "deletion", "steps": 0}]),
            StatusCode::BAD_REQUEST,
            "invalid-request",
            "steps",
        ),
        (
            json!([{"metric": "deletion", "steps": 5000}]),
            StatusCode::BAD_REQUEST,
            "invalid-request",
            "steps",
        ),
        (
            json!([{"metric": "mu_fidelity", "subset_size": 64}]),
            StatusCode::BAD_REQUEST,
            "invalid-request",
            "subset_size",
        ),
        (
            json!([{"metric": "sparseness", "steps": 3}]),
            StatusCode::BAD_REQUEST,
            "invalid-request",
            "does not apply",
        ),
        (
            json!([{"metric": "pixel_flipping", "features_in_step": 65}]),
            StatusCode::BAD_REQUEST,
            "invalid-request",
            "features_in_step",
        ),
    ];
    for (evaluate_list, status, slug, words) in cases {
        let body = json!({"image": png, "attributions": map, "evaluate": evaluate_list});
        let p = problem(evaluate(&s, "varied", body).await, status, slug).await;
        assert!(p["detail"].as_str().unwrap().contains(words), "{evaluate_list}: {p}");
    }
    // A shape whose product overflows is refused, not multiplied.
    let overflowing =
        json!({"image": png, "attributions": {"shape": [u64::MAX, 2], "values": [1]}, "evaluate": ["deletion"]});
    let p = problem(
        evaluate(&s, "varied", overflowing).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid-input",
    )
    .await;
    assert!(p["detail"].as_str().unwrap().contains("does not hold"), "{p}");
    let wrong_shape =
        json!({"image": png, "attributions": {"shape": [4], "values": [1, 2, 3, 4]}, "evaluate": ["deletion"]});
    let p = problem(
        evaluate(&s, "varied", wrong_shape).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid-input",
    )
    .await;
    assert!(p["detail"].as_str().unwrap().contains("[8, 8]"), "{p}");
    // In an explain request, the same refusal before any work.
    let p = problem(
        post_json(
            &s,
            "/v1/models/varied/explain/saliency",
            &json!({"image": png, "evaluate": ["nope"]}),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid-request",
    )
    .await;
    assert!(p["detail"].as_str().unwrap().contains("`nope`"), "{p}");
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rise_centered_estimator_finds_faint_evidence_that_the_papers_estimator_blurs() {
    // Two classes, logits near 0 (softmax near 0.5), evidence in a 3x3 region only.
    let region = |i: usize| (2..5).contains(&(i / SIDE)) && (2..5).contains(&(i % SIDE));
    let mask: Vec<f32> = (0..SIDE * SIDE).map(|i| if region(i) { 0.15 } else { 0.0 }).collect();
    let dir = temp_dir("rise-models");
    write_model(&dir, "faint", &image_model(&mask), IMAGE_MANIFEST);
    let s = start(test_config(&dir)).await;
    let bright: Vec<u8> = vec![220; SIDE * SIDE];
    let img = image::GrayImage::from_raw(SIDE as u32, SIDE as u32, bright).unwrap();
    let mut bytes = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)
        .unwrap();
    let png = base64::engine::general_purpose::STANDARD.encode(bytes);
    let mut found = Vec::new();
    for estimator in ["paper", "centered"] {
        let body = json!({"image": png, "target": 0, "seed": 2,
                          "params": {"masks": 500, "cell_size": 4, "estimator": estimator,
                                     // Independent masks: complementary pairs make every pixel's
                                     // mean mask exactly p, where centring changes nothing.
                                     "antithetic": false, "sequence": "random"},
                          "evaluate": ["deletion", "insertion"]});
        let v = ok_json(post_json(&s, "/v1/models/faint/explain/rise", &body).await).await;
        let map: Vec<f64> = v["attributions"]["values"].as_array().unwrap().iter().map(f).collect();
        let mut order: Vec<usize> = (0..map.len()).collect();
        order.sort_by(|a, b| map[*b].total_cmp(&map[*a]));
        let top_in_region = order[..9].iter().filter(|&&i| region(i)).count();
        found.push((
            estimator,
            top_in_region,
            f(&metric(&v, "deletion")["value"]),
            f(&metric(&v, "insertion")["value"]),
        ));
    }
    let (paper, centered) = (&found[0], &found[1]);
    assert!(centered.1 >= 7, "centered: {found:?}");
    assert!(
        centered.1 > paper.1,
        "centered puts more of its top pixels in the region: {found:?}"
    );
    assert!(
        centered.2 <= paper.2 && centered.3 >= paper.3,
        "and scores better: {found:?}"
    );
    eprintln!("RISE estimators (name, top-9 in region, deletion, insertion): {found:?}");
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_runs_methods_side_by_side_with_their_metrics_as_json_and_as_one_png() {
    let s = start_models().await;
    let fashion = base64::engine::general_purpose::STANDARD
        .encode(std::fs::read(root().join("tests/fixtures/fashion/test_00.png")).unwrap());
    let body = json!({"image": fashion, "seed": 3,
                      "methods": ["saliency", "grad-cam", {"method": "rise", "params": {"preset": "fast"}}]});
    let v = ok_json(post_json(&s, "/v1/models/fashion-cnn/compare", &body).await).await;
    let list = v["comparisons"].as_array().unwrap();
    assert_eq!(list.len(), 3);
    for (c, name) in list.iter().zip(["saliency", "grad-cam", "rise"]) {
        assert_eq!(c["method"], name);
        assert_eq!(
            c["target"]["label"], "Ankle boot",
            "every method explains the same class"
        );
        let names: Vec<&str> = c["evaluation"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["metric"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["deletion", "insertion"], "the default metrics");
    }
    assert_eq!(list[2]["params"]["masks"], 500);
    // The same map as the method alone.
    let alone = ok_json(
        post_json(
            &s,
            "/v1/models/fashion-cnn/explain/saliency",
            &json!({"image": fashion}),
        )
        .await,
    )
    .await;
    assert_eq!(list[0]["attributions"], alone["attributions"]);
    let png = post_json(
        &s,
        "/v1/models/fashion-cnn/compare",
        &json!({"image": fashion, "methods": ["saliency", "gradient-x-input"], "format": "png"}),
    )
    .await;
    assert_eq!(png.headers()["content-type"], "image/png");
    let img = image::load_from_memory(&png.bytes().await.unwrap()).unwrap();
    assert_eq!(
        img.width(),
        3 * 168,
        "the input and one panel per method, each scaled to 168 px"
    );
    let nine: Vec<&str> = vec!["saliency"; 9];
    for (body, status, slug, words) in [
        (
            json!({"image": fashion, "methods": nine}),
            StatusCode::BAD_REQUEST,
            "invalid-request",
            "1 to 8",
        ),
        (
            json!({"image": fashion, "methods": ["saliency"], "target": {"top_k": 2}}),
            StatusCode::BAD_REQUEST,
            "invalid-request",
            "one class",
        ),
        (
            json!({"image": fashion, "methods": ["nope"]}),
            StatusCode::NOT_FOUND,
            "not-found",
            "no method `nope`",
        ),
        (
            json!({"image": fashion, "methods": ["saliency"], "evaluate": ["nope"]}),
            StatusCode::BAD_REQUEST,
            "invalid-request",
            "no metric",
        ),
    ] {
        let resp = post_json(&s, "/v1/models/fashion-cnn/compare", &body).await;
        let p = problem(resp, status, slug).await;
        assert!(p["detail"].as_str().unwrap().contains(words), "{p}");
    }
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_randomization_check_fails_guided_backprop_and_passes_saliency_on_the_trained_cnn() {
    let s = start_models().await;
    // Adebayo et al.'s finding: guided backprop's map survives randomising the top layer,
    // the gradient's does not.
    let mut first_step = std::collections::HashMap::new();
    for method in ["saliency", "guided-backprop"] {
        let mut sum = 0.0;
        for i in 0..3 {
            let image = base64::engine::general_purpose::STANDARD
                .encode(std::fs::read(root().join(format!("tests/fixtures/fashion/test_{i:02}.png"))).unwrap());
            let body = json!({"image": image, "seed": 4, "evaluate": [{"metric": "model_randomization", "layers": 2}]});
            let v = ok_json(post_json(&s, &format!("/v1/models/fashion-cnn/explain/{method}"), &body).await).await;
            let check = metric(&v, "model_randomization");
            assert_eq!(
                check["params"]["layers"],
                json!(["fc", "conv3"]),
                "cascading from the output"
            );
            let curve = check["curve"].as_array().unwrap();
            assert_eq!(curve.len(), 2);
            assert_eq!(check["value"], curve[1]);
            sum += f(&curve[0]);
            if i == 0 {
                let again =
                    ok_json(post_json(&s, &format!("/v1/models/fashion-cnn/explain/{method}"), &body).await).await;
                assert_eq!(metric(&again, "model_randomization")["curve"], check["curve"], "seeded");
            }
        }
        first_step.insert(method, sum / 3.0);
    }
    assert!(first_step["guided-backprop"] > 0.6, "{first_step:?}");
    assert!(first_step["saliency"] < 0.45, "{first_step:?}");
    // Budgets and models without weights are refused before any work.
    let fashion = base64::engine::general_purpose::STANDARD
        .encode(std::fs::read(root().join("tests/fixtures/fashion/test_00.png")).unwrap());
    let p = problem(
        post_json(
            &s,
            "/v1/models/fashion-cnn/explain/rise",
            &json!({"image": fashion, "params": {"masks": 2000}, "evaluate": ["model_randomization"]}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid-input",
    )
    .await;
    assert!(p["detail"].as_str().unwrap().contains("max_samples"), "{p}");
    let p = problem(
        evaluate(&s, "varied", json!({"image": image(1).0, "attributions": {"shape": [SIDE, SIDE], "values": vec![1.0; SIDE * SIDE]}, "evaluate": ["model_randomization"]})).await,
        StatusCode::BAD_REQUEST,
        "invalid-request",
    )
    .await;
    assert!(p["detail"].as_str().unwrap().contains("explain request"), "{p}");
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_map_on_the_original_images_grid_is_brought_onto_the_models() {
    let s = start_models().await;
    // A 56x56 photo of a 28x28 input: each model pixel is a 2x2 block of the original.
    let small = image::open(root().join("tests/fixtures/fashion/test_00.png"))
        .unwrap()
        .to_luma8();
    let big = image::imageops::resize(&small, 56, 56, image::imageops::FilterType::Nearest);
    let mut bytes = Vec::new();
    big.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)
        .unwrap();
    let png = base64::engine::general_purpose::STANDARD.encode(bytes);
    let mut rng = Rng::new(21);
    let map28: Vec<f32> = (0..28 * 28).map(|_| rng.uniform(0.0, 1.0)).collect();
    let map56: Vec<f32> = (0..56 * 56).map(|i| map28[(i / 56 / 2) * 28 + (i % 56) / 2]).collect();
    let metrics = json!(["deletion", "insertion", "sparseness"]);
    let on_model = ok_json(
        evaluate(
            &s,
            "fashion-cnn",
            json!({"image": png, "attributions": {"shape": [28, 28], "values": map28}, "evaluate": metrics}),
        )
        .await,
    )
    .await;
    let on_image = ok_json(
        evaluate(
            &s,
            "fashion-cnn",
            json!({"image": png, "attributions": {"shape": [56, 56], "values": map56}, "evaluate": metrics}),
        )
        .await,
    )
    .await;
    // Each model pixel averages the original pixels it covers: blocks come back exactly.
    for name in ["deletion", "insertion", "sparseness"] {
        let (a, b) = (
            f(&metric(&on_model, name)["value"]),
            f(&metric(&on_image, name)["value"]),
        );
        assert!(
            (a - b).abs() < 1e-6,
            "{name}: {a} on the model's grid vs {b} brought from the image's"
        );
    }
    let p = problem(
        evaluate(
            &s,
            "fashion-cnn",
            json!({"image": png, "attributions": {"shape": [30, 30], "values": vec![0.0; 900]}, "evaluate": metrics}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid-input",
    )
    .await;
    assert!(p["detail"].as_str().unwrap().contains("[56, 56]"), "{p}");
    s.stop().await.unwrap();
}
