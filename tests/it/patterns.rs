//! PatternNet and PatternAttribution: the paper's linear toy (the gradient recovers the filter,
//! PatternNet the signal), both methods against a NumPy implementation of both estimators
//! (scripts/pattern_reference.py) on small Conv and dense networks, PatternAttribution's
//! conservation through linear layers, patterns kept on disk and reused after a restart, and the
//! refusal of a model with no data to fit on.

use crate::common;

use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

fn manifest(features: usize, labels: &[&str], background: bool) -> String {
    let names: Vec<String> = (0..features).map(|i| format!("\"f{i}\"")).collect();
    let labels: Vec<String> = labels.iter().map(|l| format!("\"{l}\"")).collect();
    let mut m = format!(
        "task = \"tabular-classification\"\nlabels = [{}]\n[tabular]\nfeatures = [{}]\n",
        labels.join(", "),
        names.join(", ")
    );
    if background {
        m += "background = \"background.csv\"\n";
    }
    m
}

fn write_background(dir: &std::path::Path, rows: &[Vec<f32>]) {
    let width = rows[0].len();
    let mut csv = (0..width).map(|i| format!("f{i}")).collect::<Vec<_>>().join(",") + "\n";
    for r in rows {
        csv += &(r.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(",") + "\n");
    }
    std::fs::write(dir.join("background.csv"), csv).unwrap();
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(a, b)| a * b).sum();
    let na: f64 = a.iter().map(|v| v * v).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|v| v * v).sum::<f64>().sqrt();
    dot / (na * nb)
}

async fn explain(s: &explaind::Service, model: &str, method: &str, features: &[f32], target: usize) -> Value {
    explain_with(s, model, method, features, target, json!({})).await
}

async fn explain_with(
    s: &explaind::Service,
    model: &str,
    method: &str,
    features: &[f32],
    target: usize,
    params: Value,
) -> Value {
    ok_json(
        post_json(
            s,
            &format!("/v1/models/{model}/explain/{method}"),
            &json!({"features": features, "target": target, "params": params}),
        )
        .await,
    )
    .await
}

/// Kindermans et al.'s toy: x = s y + d e with s = (1, 0), distractor d = (1, 1), and the filter
/// w = (1, -1) that cancels it. The gradient is w; PatternNet's signal points along s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pattern_net_recovers_the_signal_where_the_gradient_shows_the_filter() {
    let dir = temp_dir("patterns-toy");
    write_model(
        &dir,
        "toy",
        &explaind::onnx::zoo::signal_distractor([1.0, -1.0]),
        &manifest(2, &["signal", "minus"], true),
    );
    let mut rng = Rng::new(38);
    let n = 1000;
    let y: Vec<f64> = (0..n).map(|_| f64::from(rng.normal())).collect();
    let mut e: Vec<f64> = (0..n).map(|_| 2.0 * f64::from(rng.normal())).collect();
    // The paper's assumption, exactly in the sample: the distractor is uncorrelated with the
    // signal (e made orthogonal to y, both centred).
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (my, me) = (mean(&y), mean(&e));
    let y: Vec<f64> = y.iter().map(|v| v - my).collect();
    e.iter_mut().for_each(|v| *v -= me);
    let k = y.iter().zip(&e).map(|(a, b)| a * b).sum::<f64>() / y.iter().map(|a| a * a).sum::<f64>();
    e.iter_mut().zip(&y).for_each(|(e, y)| *e -= k * y);
    let rows: Vec<Vec<f32>> = y.iter().zip(&e).map(|(y, e)| vec![(y + e) as f32, *e as f32]).collect();
    write_background(&dir.join("toy"), &rows);
    let s = start(test_config(&dir)).await;
    // An input carrying signal 1.5 under a large distractor.
    let x = [1.5 + 3.0, 3.0];
    let gradient = attribution_values(&explain_with(&s, "toy", "saliency", &x, 0, json!({"abs": false})).await);
    let signal = explain(&s, "toy", "pattern-net", &x, 0).await;
    let pn = attribution_values(&signal);
    let (s_dir, w_dir) = ([1.0, 0.0], [1.0, -1.0]);
    assert!(cosine(&gradient, &w_dir) >= 0.99, "gradient {gradient:?}");
    assert!(cosine(&pn, &s_dir) >= 0.99, "PatternNet {pn:?}");
    assert!(cosine(&pn, &w_dir).abs() < 0.8, "PatternNet {pn:?} is the filter");
    // The signal's size: a y with y = w^T x = 1.5.
    assert!((pn[0] - 1.5).abs() < 0.1, "{pn:?}");
    assert_eq!(signal["details"]["patterns"]["data"], "background", "{signal}");
    assert_eq!(signal["details"]["patterns"]["fitted_now"], true, "{signal}");
    s.stop().await.unwrap();
}

/// Both methods equal the NumPy implementation of both estimators on a Conv network (ReLU,
/// zero padding, then a Gemm) and a dense one (MatMul with its bias as an Add, ReLU, Gemm), to
/// 1e-4 of the attribution's largest value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_methods_match_a_numpy_implementation_on_conv_and_dense_networks() {
    let dir = temp_dir("patterns-numpy");
    let mut rng = Rng::new(7);
    let cases = [
        (
            "conv",
            explaind::onnx::zoo::pattern_conv(11, true, true),
            36,
            vec!["a", "b"],
            1usize,
        ),
        (
            "dense",
            explaind::onnx::zoo::pattern_dense(12),
            4,
            vec!["a", "b", "c"],
            2,
        ),
    ];
    let mut data = Vec::new();
    for (name, model, features, labels, _) in &cases {
        write_model(&dir, name, model, &manifest(*features, labels, true));
        let rows: Vec<Vec<f32>> = (0..300).map(|_| rng.vec(*features, -1.0, 1.0)).collect();
        write_background(&dir.join(name), &rows);
        data.push(rows);
    }
    let s = start(test_config(&dir)).await;
    for ((name, _, features, _, target), rows) in cases.iter().zip(&data) {
        let x = rng.vec(*features, -1.0, 1.0);
        let spec = json!({
            "model": dir.join(name).join("model.onnx"),
            "kind": name,
            "data": rows,
            "input": x,
            "target": target,
        });
        let reference = pattern_reference(&spec);
        for (method, key) in [
            ("pattern-net", "pattern_net"),
            ("pattern-attribution", "pattern_attribution"),
        ] {
            let got = attribution_values(&explain(&s, name, method, &x, *target).await);
            let want: Vec<f64> = serde_json::from_value(reference[key].clone()).unwrap();
            let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
            assert!(scale > 1e-3, "{name} {method}: a vanishing reference {want:?}");
            let worst = got.iter().zip(&want).map(|(g, w)| (g - w).abs()).fold(0f64, f64::max);
            assert!(
                got.len() == want.len() && worst <= 1e-4 * scale,
                "{name} {method}: off by {worst} (scale {scale})\n got {got:?}\nwant {want:?}"
            );
        }
    }
    s.stop().await.unwrap();
}

fn pattern_reference(spec: &Value) -> Value {
    let file = temp_dir("pattern-spec").join("spec.json");
    std::fs::write(&file, spec.to_string()).unwrap();
    let out = std::process::Command::new(test_venv("python"))
        .arg(root().join("scripts/pattern_reference.py"))
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Patterns make w^T a = 1 per output neuron, so a network of linear layers (a convolution
/// without padding, a Gemm) hands the whole score to the input: the relevance's sum is the score.
/// The patterns are kept on disk: a second request, and a restarted service, fit nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pattern_attribution_conserves_through_linear_layers_and_patterns_survive_a_restart() {
    let dir = temp_dir("patterns-conserve");
    write_model(
        &dir,
        "lin",
        &explaind::onnx::zoo::pattern_conv(5, false, false),
        &manifest(36, &["a", "b"], true),
    );
    let mut rng = Rng::new(3);
    let rows: Vec<Vec<f32>> = (0..200).map(|_| rng.vec(36, -1.0, 1.0)).collect();
    write_background(&dir.join("lin"), &rows);
    let config = test_config(&dir);
    let s = start(config.clone()).await;
    let x = rng.vec(36, -1.0, 1.0);
    let v = explain(&s, "lin", "pattern-attribution", &x, 1).await;
    let d = &v["details"];
    let (sum, score) = (
        d["relevance_sum"].as_f64().unwrap(),
        d["target_score"].as_f64().unwrap(),
    );
    assert!((sum - score).abs() <= 1e-4 * score.abs().max(1.0), "{v}");
    assert!(
        v["convergence_delta"].as_f64().unwrap().abs() <= 1e-4 * score.abs().max(1.0),
        "{v}"
    );
    assert_eq!(d["patterns"]["fitted_now"], true, "{v}");
    assert_eq!(d["patterns"]["layers"], 2, "{v}");
    assert_eq!(d["patterns"]["two_component"], 0, "{v}");
    let again = explain(&s, "lin", "pattern-net", &x, 1).await;
    assert_eq!(again["details"]["patterns"]["fitted_now"], false, "{again}");
    s.stop().await.unwrap();
    let kept: Vec<_> = std::fs::read_dir(config.data_dir.join("patterns")).unwrap().collect();
    assert_eq!(kept.len(), 1, "one pattern file");

    let s = start(config).await;
    let after = explain(&s, "lin", "pattern-attribution", &x, 1).await;
    assert_eq!(after["details"]["patterns"]["fitted_now"], false, "{after}");
    assert_eq!(after["attributions"], v["attributions"]);
    s.stop().await.unwrap();
}

/// A model with no reference set and no background rows has nothing to fit patterns on: both
/// methods are refused with 422 and the reason, and the model's report lists them as unavailable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pattern_methods_without_data_are_refused() {
    let dir = temp_dir("patterns-nodata");
    write_model(
        &dir,
        "bare",
        &explaind::onnx::zoo::pattern_dense(1),
        &manifest(4, &["a", "b", "c"], false),
    );
    let s = start(test_config(&dir)).await;
    for method in ["pattern-net", "pattern-attribution"] {
        let p = problem(
            post_json(
                &s,
                &format!("/v1/models/bare/explain/{method}"),
                &json!({"features": [0.1, 0.2, 0.3, 0.4]}),
            )
            .await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-input",
        )
        .await;
        assert!(p["detail"].as_str().unwrap().contains("background"), "{p}");
        let report = get_json(&s, "/v1/models/bare").await;
        assert!(
            unavailable_reason(&report, method).contains("reference set"),
            "{report}"
        );
    }
    s.stop().await.unwrap();
}
