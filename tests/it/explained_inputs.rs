//! Several explained inputs (issue 35 item 2): a tabular model with two float inputs, `vitals`
//! `[batch, 3]` and `labs` `[batch, 2]`, both marked explained. explaind joins them into one input
//! whose features are both blocks' (named `vitals[0]`, ..., `labs[1]`), so every method attributes
//! over the union. The model is linear, `logits = vitals Wv + labs Wl + b`, so the answers are known:
//! gradients are the weights, Integrated Gradients from zeros `w_i x_i` (adding up to
//! `f(x) - f(0)` over both inputs), and sampled Shapley and KernelSHAP (on the probability) add up
//! to `p(x) - p(0)` over the five features of both.

use crate::common;

use common::*;
use explaind::onnx::builder::GraphBuilder;
use reqwest::StatusCode;
use serde_json::{json, Value};

/// Weights: rows are features (vitals then labs), columns the classes `[no, yes]`.
const W: [[f32; 2]; 5] = [[0.5, -1.0], [2.0, 0.25], [-0.75, 1.5], [1.0, 3.0], [-2.0, 0.5]];
const BIAS: [f32; 2] = [0.1, -0.2];

fn two_block_model() -> explaind::onnx::proto::ModelProto {
    let mut g = GraphBuilder::new("two_blocks", 17);
    let vitals = g.input("vitals", &[-1, 3]);
    let labs = g.input("labs", &[-1, 2]);
    let flat: Vec<f32> = W.iter().flatten().copied().collect();
    let wv = g.constant("wv", &[3, 2], &flat[..6]);
    let wl = g.constant("wl", &[2, 2], &flat[6..]);
    let b = g.constant("b", &[2], &BIAS);
    let a = g.node("MatMul", &[&vitals, &wv], vec![]);
    let c = g.node("MatMul", &[&labs, &wl], vec![]);
    let s = g.node("Add", &[&a, &c], vec![]);
    g.node("Add", &[&s, &b], vec![]);
    g.rename_last_output("logits");
    g.output("logits", &[-1, 2]);
    g.build()
}

const MANIFEST: &str = "task = \"tabular-classification\"\nlabels = [\"no\", \"yes\"]\n\
[tabular]\nbackground = \"background.csv\"\n[inputs.vitals]\nrole = \"explained\"\n[inputs.labs]\nrole = \"explained\"\n";

const X: [f64; 5] = [0.7, -1.2, 0.4, 2.0, -0.5];

fn logit(x: &[f64], class: usize) -> f64 {
    x.iter().zip(&W).map(|(x, w)| x * f64::from(w[class])).sum::<f64>() + f64::from(BIAS[class])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_explained_inputs_are_attributed_together_with_known_answers() {
    let dir = temp_dir("explained-inputs");
    write_model(&dir, "two-blocks", &two_block_model(), MANIFEST);
    // One background row of zeros: KernelSHAP's missing features are zeros.
    std::fs::write(
        dir.join("two-blocks/background.csv"),
        "vitals[0],vitals[1],vitals[2],labs[0],labs[1]\n0,0,0,0,0\n",
    )
    .unwrap();
    // Only a tabular model joins its inputs, and `input` cannot pick one of them.
    write_model(
        &dir,
        "two-blocks-input",
        &two_block_model(),
        &format!("input = \"vitals\"\n{MANIFEST}"),
    );
    let image = MANIFEST.replace("tabular-classification", "image-classification");
    write_model(&dir, "two-blocks-image", &two_block_model(), &image);
    let s = start(test_config(&dir)).await;
    let list = get_json(&s, "/v1/models").await;
    let failed: Vec<(String, String)> = list["failed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["name"].as_str().unwrap().into(), f["error"].as_str().unwrap().into()))
        .collect();
    assert_eq!(failed.len(), 2, "{list}");
    assert!(
        failed[0].1.contains("only a tabular model's float inputs"),
        "{failed:?}"
    );
    assert!(failed[1].1.contains("`input` names none"), "{failed:?}");

    let report = get_json(&s, "/v1/models/two-blocks").await;
    assert_eq!(
        report["inputs"],
        json!([
            {"name": "vitals", "dtype": "float32", "role": "explained", "shape": [3], "batched": true, "features": [0, 3]},
            {"name": "labs", "dtype": "float32", "role": "explained", "shape": [2], "batched": true, "features": [3, 5]},
        ]),
        "{report}"
    );
    assert_eq!(
        report["tabular"]["features"],
        json!(["vitals[0]", "vitals[1]", "vitals[2]", "labs[0]", "labs[1]"])
    );
    // Each input its own array, or all five features in order: the same prediction.
    let by_input = json!({"features": {"vitals": &X[..3], "labs": &X[3..]}});
    let p = ok_json(post_json(&s, "/v1/models/two-blocks/predict", &by_input).await).await;
    let q = ok_json(post_json(&s, "/v1/models/two-blocks/predict", &json!({"features": X})).await).await;
    assert_eq!(p["outputs"], q["outputs"]);
    let logits: Vec<f64> = serde_json::from_value(p["outputs"]["logits"].clone()).unwrap();
    for (c, got) in logits.iter().enumerate() {
        assert!((got - logit(&X, c)).abs() < 1e-5, "{logits:?}");
    }

    let explain = |method: &'static str, params: Value| {
        let s = &s;
        let body = json!({"features": {"vitals": &X[..3], "labs": &X[3..]}, "target": "yes", "seed": 2,
                          "params": params});
        async move { ok_json(post_json(s, &format!("/v1/models/two-blocks/explain/{method}"), &body).await).await }
    };
    let close = |what: &str, got: &[f64], want: &[f64], tol: f64| {
        assert_eq!(got.len(), 5, "{what}: one value per feature of both inputs");
        for (i, (a, b)) in got.iter().zip(want).enumerate() {
            assert!((a - b).abs() < tol, "{what}: feature {i}: {a} vs {b} ({got:?})");
        }
    };
    let weights: Vec<f64> = W.iter().map(|w| f64::from(w[1])).collect();
    let v = explain("saliency", json!({"abs": false})).await;
    close("saliency", &attribution_values(&v), &weights, 1e-5);
    // Integrated Gradients from zeros: w_i x_i, complete over both inputs together.
    let v = explain("integrated-gradients", json!({"baseline": "black", "steps": 16})).await;
    let ig = attribution_values(&v);
    let want: Vec<f64> = X.iter().zip(&weights).map(|(x, w)| x * w).collect();
    close("integrated gradients", &ig, &want, 1e-4);
    let change = logit(&X, 1) - logit(&[0.0; 5], 1);
    let total: f64 = ig.iter().sum();
    assert!((total - change).abs() < 1e-4, "sum {total} vs f(x) - f(0) = {change}");
    assert!(v["convergence_delta"].as_f64().unwrap().abs() < 1e-4, "{v}");
    // Perturbation over the union: sampled Shapley and KernelSHAP explain the probability of `yes`
    // (softmax of the logits); both are efficient, so their values over the five players of both
    // inputs add up to p(x) - p(0) (zeros: the baseline and the one background row), and every
    // feature of both inputs takes a share.
    let p_yes = |x: &[f64]| 1.0 / (1.0 + (logit(x, 0) - logit(x, 1)).exp());
    let change = p_yes(&X) - p_yes(&[0.0; 5]);
    for (method, params) in [
        ("sampled-shapley", json!({"baseline": "black", "permutations": 8})),
        ("kernel-shap", json!({"samples": 32})),
    ] {
        let values = attribution_values(&explain(method, params).await);
        assert_eq!(values.len(), 5, "{method}: {values:?}");
        let total: f64 = values.iter().sum();
        assert!(
            (total - change).abs() < 1e-3,
            "{method}: sum {total} vs p(x) - p(0) = {change}"
        );
        assert!(values.iter().all(|v| v.abs() > 1e-3), "{method}: {values:?}");
    }

    // A request missing an explained input, or with one of the wrong length, is refused naming it.
    for (features, says) in [
        (json!({"vitals": &X[..3]}), "missing explained input `labs`"),
        (
            json!({"vitals": &X[..3], "labs": [1.0, 2.0, 3.0]}),
            "input `labs` takes [2]",
        ),
        (
            json!({"vitals": &X[..3], "labs": &X[3..], "extra": [1.0]}),
            "unknown input `extra`",
        ),
        (json!(X[..4]), "(3 of input `vitals`, then 2 of input `labs`)"),
    ] {
        for path in [
            "/v1/models/two-blocks/predict",
            "/v1/models/two-blocks/explain/saliency",
        ] {
            let r = post_json(&s, path, &json!({"features": features})).await;
            let body = problem(r, StatusCode::UNPROCESSABLE_ENTITY, "invalid-input").await;
            let detail = body["detail"].as_str().unwrap();
            assert!(detail.contains(says), "{path} {features}: expected `{says}` in {body}");
        }
    }
    s.stop().await.unwrap();
}
