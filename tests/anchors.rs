//! Anchors (issue 18): on a model that decides by one feature the anchor is a condition on that
//! feature with precision 1; on the bundled MLP the reported precision lies within two standard
//! errors of a fresh estimate on 10,000 samples drawn the same way (background rows, the
//! anchored features that break the rule replaced by background values that keep it), and the
//! coverage is the share of background rows the rule covers; bad parameters are refused.

mod common;

use common::gradcheck::{run_output, runner};
use common::*;
use explaind::onnx::builder::GraphBuilder;
use serde_json::{json, Value};

/// logits = [a, -a]: class 0 exactly when `a` > 0; `b` and `c` are ignored.
fn one_feature_model() -> explaind::onnx::proto::ModelProto {
    let mut g = GraphBuilder::new("one-feature", 17);
    let x = g.input("input", &[-1, 3]);
    let w = g.constant("w", &[3, 2], &[1.0, -1.0, 0.0, 0.0, 0.0, 0.0]);
    g.node("MatMul", &[&x, &w], vec![]);
    g.rename_last_output("logits");
    g.output("logits", &[-1, 2]);
    g.build()
}

/// Whether a background row satisfies every condition of an answer's anchor.
fn satisfies(anchor: &[Value], features: &[String], row: &[f32]) -> bool {
    anchor.iter().all(|c| {
        let f = features
            .iter()
            .position(|f| f == c["feature"].as_str().unwrap())
            .unwrap();
        let cut = c["value"].as_f64().unwrap() as f32;
        match c["op"].as_str().unwrap() {
            "<=" => row[f] <= cut,
            _ => row[f] > cut,
        }
    })
}

fn read_background(path: &std::path::Path) -> Vec<Vec<f32>> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split(',').map(|v| v.trim().parse::<f32>().unwrap()).collect())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_feature_model_is_anchored_on_that_feature() {
    let dir = temp_dir("anchors-one");
    write_model(
        &dir,
        "one",
        &one_feature_model(),
        "task = \"tabular-classification\"\nlabels = [\"pos\", \"neg\"]\n[tabular]\nfeatures = [\"a\", \"b\", \"c\"]\nbackground = \"background.csv\"\n",
    );
    let mut rng = Rng::new(5);
    let mut csv = String::from("a,b,c\n");
    for _ in 0..200 {
        csv += &format!(
            "{},{},{}\n",
            rng.uniform(-3.0, 3.0),
            rng.uniform(-3.0, 3.0),
            rng.uniform(-3.0, 3.0)
        );
    }
    std::fs::write(dir.join("one/background.csv"), csv).unwrap();
    let s = start(test_config(&dir)).await;
    let v = ok_json(
        post_json(
            &s,
            "/v1/models/one/explain/anchors",
            &json!({"features": [2.5, 0.3, -1.0]}),
        )
        .await,
    )
    .await;
    let d = &v["details"];
    let anchor = d["anchor"].as_array().unwrap();
    assert_eq!(anchor.len(), 1, "{d}");
    assert_eq!(anchor[0]["feature"], "a", "{d}");
    assert_eq!(anchor[0]["op"], ">", "{d}");
    assert!(anchor[0]["value"].as_f64().unwrap() >= 0.0, "{d}");
    assert_eq!(d["precision"], 1.0, "{d}");
    assert_eq!(d["meets_threshold"], true, "{d}");
    assert!(d["examples"]["different"].as_array().unwrap().is_empty(), "{d}");
    assert!(!d["examples"]["same"].as_array().unwrap().is_empty(), "{d}");
    // The attribution marks the anchored feature.
    assert_eq!(v["attributions"]["values"], json!([1.0, 0.0, 0.0]));
    // Bad parameters name themselves.
    assert_params_refused(
        &s,
        "/v1/models/one/explain/anchors",
        &json!({"features": [2.5, 0.3, -1.0]}),
        &[
            (json!({"threshold": 1.5}), "threshold"),
            (json!({"delta": 0}), "delta"),
            (json!({"beam_size": 0}), "beam_size"),
            (json!({"samples": 10}), "samples"),
            (json!({"samples": 1_000_000_000u64}), "samples"),
            (json!({"max_anchor_size": 4}), "max_anchor_size"),
        ],
    )
    .await;
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reported_precision_matches_a_fresh_estimate() {
    let s = start(test_config(&root().join("models"))).await;
    let features = tabular_features(&s, "breast-cancer").await;
    let background = read_background(&root().join("models/breast-cancer/background.csv"));
    let mut session = runner().session(&bundled_model("breast-cancer")).unwrap();
    let mut rng = Rng::new(77);
    for x in breast_cancer_holdout().iter().take(3) {
        let v = ok_json(
            post_json(
                &s,
                "/v1/models/breast-cancer/explain/anchors",
                &json!({"features": x, "seed": 3}),
            )
            .await,
        )
        .await;
        let d = &v["details"];
        let anchor = d["anchor"].as_array().unwrap().clone();
        let label = d["prediction"]["index"].as_u64().unwrap() as usize;
        let (p, n) = (
            d["precision"].as_f64().unwrap(),
            d["precision_samples"].as_f64().unwrap(),
        );
        assert!(n > 0.0, "{d}");
        // Coverage: the share of background rows the rule covers.
        let covered = background.iter().filter(|r| satisfies(&anchor, &features, r)).count();
        assert!(
            (d["coverage"].as_f64().unwrap() - covered as f64 / background.len() as f64).abs() < 1e-12,
            "{d}"
        );
        // A fresh estimate on 10,000 samples drawn the same way.
        let fresh_n = 10_000;
        let mut rows = Vec::with_capacity(fresh_n * features.len());
        for _ in 0..fresh_n {
            let mut row = background[(rng.next_u64() % background.len() as u64) as usize].clone();
            for c in &anchor {
                let f = features
                    .iter()
                    .position(|f| f == c["feature"].as_str().unwrap())
                    .unwrap();
                let on_f: Vec<&Value> = anchor.iter().filter(|d| d["feature"] == c["feature"]).collect();
                let keeps = |v: f32| {
                    on_f.iter().all(|c| {
                        let cut = c["value"].as_f64().unwrap() as f32;
                        if c["op"] == "<=" {
                            v <= cut
                        } else {
                            v > cut
                        }
                    })
                };
                if !keeps(row[f]) {
                    let values: Vec<f32> = background.iter().map(|r| r[f]).filter(|v| keeps(*v)).collect();
                    row[f] = values[(rng.next_u64() % values.len() as u64) as usize];
                }
            }
            rows.extend(row);
        }
        let (_, logits) = run_output(
            &mut session,
            &[("input", vec![fresh_n, features.len()], rows)],
            "logits",
        );
        let hits = logits
            .chunks(2)
            .filter(|l| (if l[1] > l[0] { 1 } else { 0 }) == label)
            .count();
        let fresh = hits as f64 / fresh_n as f64;
        let se = (p * (1.0 - p) / n + fresh * (1.0 - fresh) / fresh_n as f64).sqrt();
        assert!(
            (p - fresh).abs() <= 2.0 * se + 1e-9,
            "reported {p} on {n} samples, fresh {fresh} on {fresh_n} (2 SE = {}); {d}",
            2.0 * se
        );
    }
    s.stop().await.unwrap();
}
