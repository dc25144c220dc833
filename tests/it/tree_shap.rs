//! TreeSHAP against the shap package. scripts/tree_shap_reference.py (run here, in the test
//! virtualenv that scripts/test-setup.sh installs) trains scikit-learn and LightGBM ensembles with
//! fixed seeds, converts them to ONNX, and computes shap.TreeExplainer's values in both games; the
//! service, on those ONNX files, must give the same values within 1e-5.

use crate::common;

use std::path::PathBuf;
use std::process::Command;

use common::{problem, root, start, temp_dir, test_config, test_venv, url};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// Runs the reference script into a fresh folder: models/ and expected.json.
fn reference() -> (PathBuf, Value) {
    let dir = temp_dir("tree-shap");
    let py = test_venv("python");
    assert!(
        py.exists(),
        "{} missing: run scripts/test-setup.sh (make test does)",
        py.display()
    );
    let out = Command::new(&py)
        .arg(root().join("scripts/tree_shap_reference.py"))
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "reference script failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected = serde_json::from_slice(&std::fs::read(dir.join("expected.json")).unwrap()).unwrap();
    (dir, expected)
}

async fn explain(http: &reqwest::Client, base: &str, model: &str, body: Value) -> Value {
    let r = http
        .post(format!("{base}/v1/models/{model}/explain/tree-shap"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let v: Value = r.json().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{model}: {v}");
    v
}

/// The explanation of the `k`-th requested target (one target's sits at the top level).
fn explanation(answer: &Value, k: usize) -> &Value {
    match answer.get("explanations") {
        Some(list) => &list[k],
        None => answer,
    }
}

fn check_model(model: &str, game: &str, reference: &Value, answers: &[Value]) -> f64 {
    let classes: Vec<usize> = serde_json::from_value(reference[game]["classes"].clone()).unwrap();
    let mut worst = 0f64;
    for (r, answer) in answers.iter().enumerate() {
        for (k, class) in classes.iter().enumerate() {
            let e = explanation(answer, *class);
            assert_eq!(e["target"]["index"], *class);
            let d = &e["details"];
            assert_eq!(d["feature_perturbation"], game);
            let got: Vec<f64> = serde_json::from_value(d["shapley_values"].clone()).unwrap();
            let want: Vec<f64> = reference[game]["values"][r]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f[k].as_f64().unwrap())
                .collect();
            assert_eq!(got.len(), want.len());
            for (j, (g, w)) in got.iter().zip(&want).enumerate() {
                worst = worst.max((g - w).abs());
                assert!(
                    (g - w).abs() < 1e-5,
                    "{model} {game} row {r} class {class} feature {j}: {g} vs shap {w}"
                );
            }
            let base = d["base_value"].as_f64().unwrap();
            let shap_base = reference[game]["base"][k].as_f64().unwrap();
            assert!(
                (base - shap_base).abs() < 1e-5,
                "{model} {game}: base {base} vs shap {shap_base}"
            );
            // Efficiency: the values sum to the raw output minus the expected value.
            assert!(
                d["efficiency_gap"].as_f64().unwrap().abs() < 1e-9,
                "{model} {game}: {d}"
            );
        }
    }
    worst
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tree_shap_matches_the_shap_package_in_both_games() {
    let (dir, expected) = reference();
    let s = start(test_config(&dir.join("models"))).await;
    let base = url(&s, "");
    let http = reqwest::Client::new();
    let mut report = Vec::new();
    for (model, reference) in expected.as_object().unwrap() {
        let rows = reference["rows"].as_array().unwrap();
        let classes = reference["interventional"]["values"][0][0].as_array().unwrap().len();
        let all_classes: Vec<usize> = match (model.as_str(), classes) {
            ("gb-binary", _) | ("rf-binary", _) => vec![0, 1],
            (_, n) => (0..n).collect(),
        };
        for game in ["interventional", "tree_path_dependent"] {
            let mut answers = Vec::new();
            for row in rows {
                let v = explain(
                    &http,
                    &base,
                    model,
                    json!({"features": row, "target": all_classes,
                           "params": {"feature_perturbation": game, "background_rows": 1000}}),
                )
                .await;
                answers.push(v);
            }
            let d = &explanation(&answers[0], 0)["details"];
            // The scores ONNX Runtime gave must be the ones the trees were read to give.
            assert_eq!(d["checked_against_runtime"], true, "{model}: {d}");
            match game {
                "interventional" => assert_eq!(d["background"]["summary"], "all rows"),
                _ if model.starts_with("rf") => assert_eq!(d["covers"], "model (nodes_hitrates)"),
                _ => assert_eq!(d["covers"], "background rows"),
            }
            let worst = check_model(model, game, reference, &answers);
            report.push(format!("{model} {game}: max |diff| {worst:.1e}"));
        }
    }
    eprintln!("{}", report.join("\n"));
    // Without parameters the answer says which game the model's background data chose.
    let row = &expected["rf-binary"]["rows"][0];
    let v = explain(&http, &base, "rf-binary", json!({"features": row})).await;
    assert_eq!(v["params"]["feature_perturbation"], "interventional", "{}", v["params"]);
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tree_shap_refuses_models_without_trees_naming_why() {
    let dir = temp_dir("tree-shap-refusals");
    for m in ["breast-cancer", "fashion-cnn"] {
        common::copy_bundled(m, &dir);
    }
    let s = start(test_config(&dir)).await;
    let http = reqwest::Client::new();
    let holdout: Value =
        serde_json::from_slice(&std::fs::read(root().join("tests/fixtures/breast_cancer_holdout.json")).unwrap())
            .unwrap();
    let r = http
        .post(url(&s, "/v1/models/breast-cancer/explain/tree-shap"))
        .json(&json!({"features": holdout["cases"][0]["features"]}))
        .send()
        .await
        .unwrap();
    let p = problem(r, StatusCode::UNPROCESSABLE_ENTITY, "unsupported-model").await;
    assert!(p["detail"].as_str().unwrap().contains("breast-cancer"), "{p}");
    assert!(p["detail"].as_str().unwrap().contains("TreeEnsembleClassifier"), "{p}");
    let r = http
        .post(url(&s, "/v1/models/fashion-cnn/explain/tree-shap"))
        .json(&json!({"image": ""}))
        .send()
        .await
        .unwrap();
    let p = problem(r, StatusCode::UNPROCESSABLE_ENTITY, "invalid-input").await;
    assert!(p["detail"].as_str().unwrap().contains("tabular"), "{p}");
    s.stop().await.unwrap();
}
