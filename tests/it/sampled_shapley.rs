//! `sampled-shapley` against known answers: a linear model's closed form (every permutation gives
//! w_i (x_i - b_i), Captum's formula), a small MLP's exact Shapley values by enumeration, with
//! standard errors the size of the true errors over seeds; antithetic pairs measured against plain
//! permutations; seeded bytes; parameters refused by name. A real server on loopback.

use crate::common;

use common::*;
use explaind::onnx::builder::GraphBuilder;
use serde_json::{json, Value};

const FEATURES: usize = 5;
const HIDDEN: usize = 6;

/// The MLP's weights: W1 [5, 6], b1 [6], W2 [6, 2], b2 [2] (seeded).
fn mlp_weights() -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut rng = Rng::new(2014);
    (
        rng.vec(FEATURES * HIDDEN, -1.5, 1.5),
        rng.vec(HIDDEN, -0.5, 0.5),
        rng.vec(HIDDEN * 2, -1.5, 1.5),
        rng.vec(2, -0.2, 0.2),
    )
}

/// logits = tanh(x W1 + b1) W2 + b2: interactions of every order between the features.
fn mlp() -> explaind::onnx::proto::ModelProto {
    let (w1, b1, w2, b2) = mlp_weights();
    let mut g = GraphBuilder::new("mlp", 17);
    let x = g.input("input", &[-1, FEATURES as i64]);
    let w1 = g.constant("w1", &[FEATURES as i64, HIDDEN as i64], &w1);
    let b1 = g.constant("b1", &[HIDDEN as i64], &b1);
    let w2 = g.constant("w2", &[HIDDEN as i64, 2], &w2);
    let b2 = g.constant("b2", &[2], &b2);
    let h = g.node("MatMul", &[&x, &w1], vec![]);
    let h = g.node("Add", &[&h, &b1], vec![]);
    let h = g.node("Tanh", &[&h], vec![]);
    let o = g.node("MatMul", &[&h, &w2], vec![]);
    g.node("Add", &[&o, &b2], vec![]);
    g.rename_last_output("logits");
    g.output("logits", &[-1, 2]);
    g.build()
}

/// The MLP's output `k` at `x`, in f64.
fn mlp_at(x: &[f64], k: usize) -> f64 {
    let (w1, b1, w2, b2) = mlp_weights();
    let mut out = b2[k] as f64;
    for h in 0..HIDDEN {
        let pre: f64 = (0..FEATURES).map(|i| x[i] * w1[i * HIDDEN + h] as f64).sum::<f64>() + b1[h] as f64;
        out += pre.tanh() * w2[h * 2 + k] as f64;
    }
    out
}

/// Exact Shapley values of the game v(S) = f(x on S, baseline elsewhere), by enumeration.
fn exact_shapley(f: impl Fn(&[f64]) -> f64, x: &[f64], baseline: &[f64]) -> Vec<f64> {
    let m = x.len();
    let fact = |n: usize| (1..=n).map(|k| k as f64).product::<f64>();
    let v = |mask: usize| {
        let point: Vec<f64> = (0..m)
            .map(|j| if mask >> j & 1 == 1 { x[j] } else { baseline[j] })
            .collect();
        f(&point)
    };
    let mut phi = vec![0.0; m];
    for mask in 0..1usize << m {
        let size = mask.count_ones() as usize;
        for (i, value) in phi.iter_mut().enumerate() {
            if mask >> i & 1 == 0 {
                *value += fact(size) * fact(m - size - 1) / fact(m) * (v(mask | 1 << i) - v(mask));
            }
        }
    }
    phi
}

const BACKGROUND: &str = "f0,f1,f2,f3\n1,2,3,4\n-1,0,1,2\n0.5,0.5,-0.5,0\n";

async fn start_models() -> explaind::Service {
    let dir = temp_dir("sampled-shapley-models");
    let names: Vec<String> = (0..FEATURES).map(|i| format!("\"x{i}\"")).collect();
    write_model(
        &dir,
        "mlp",
        &mlp(),
        &format!(
            "task = \"tabular-classification\"\nscores = \"raw\"\nlabels = [\"a\", \"b\"]\n[tabular]\nfeatures = [{}]\n",
            names.join(", ")
        ),
    );
    write_model(
        &dir,
        "linear",
        &linear_model().0,
        "task = \"tabular-classification\"\nscores = \"raw\"\nlabels = [\"a\", \"b\"]\n[tabular]\nfeatures = [\"f0\", \"f1\", \"f2\", \"f3\"]\nbackground = \"background.csv\"\n",
    );
    std::fs::write(dir.join("linear/background.csv"), BACKGROUND).unwrap();
    common::copy_bundled("fashion-cnn", &dir);
    start(test_config(&dir)).await
}

fn numbers(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linear_models_get_the_closed_form_from_every_permutation() {
    let s = start_models().await;
    let (_, w) = linear_model();
    let x = [1.5f32, -2.0, 0.5, 3.0];
    let mean = [1.0f32 / 6.0, 2.5 / 3.0, 3.5 / 3.0, 2.0];
    for (baseline, b) in [("black", [0f32; 4]), ("mean", mean)] {
        for antithetic in [false, true] {
            let body = json!({"features": x, "target": 1, "seed": 4,
                "params": {"permutations": 3, "antithetic": antithetic, "baseline": baseline}});
            let v = ok_json(post_json(&s, "/v1/models/linear/explain/sampled-shapley", &body).await).await;
            let got = attribution_values(&v);
            let se = numbers(&Value::Array(
                v["details"]["standard_errors"].as_array().unwrap().clone(),
            ));
            for i in 0..4 {
                let want = (w[i * 2 + 1] * (x[i] - b[i])) as f64;
                assert!(
                    (got[i] - want).abs() < 1e-5,
                    "{baseline}, feature {i}: {} vs {want}",
                    got[i]
                );
                assert!(se[i] < 1e-5, "{baseline}: a linear model's values do not vary: {se:?}");
            }
            let d = &v["details"];
            assert!(d["efficiency_gap"].as_f64().unwrap().abs() < 1e-5, "{d}");
            // An odd number of permutations runs as the next even one when they come in pairs.
            assert_eq!(d["permutations"], if antithetic { 4 } else { 3 });
            assert_eq!(v["params"]["permutations"], d["permutations"]);
            // Three permutations of 4 features (one row each step between none and all), and the baseline.
            let steps = d["permutations"].as_u64().unwrap() * 3 + 1;
            assert_eq!(v["stats"]["model_rows"].as_u64().unwrap(), steps + 1, "{}", v["stats"]);
        }
    }
    s.stop().await.unwrap();
}

/// The MLP's exact values from zeros, next to sampled ones over seeds: nine values in ten at least
/// within three of their standard errors, the true errors' root mean square within 2x of the
/// standard errors', and
/// antithetic pairs no worse than plain permutations at the same rows (figures printed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mlp_values_match_enumeration_within_honest_standard_errors() {
    let s = start_models().await;
    let x = [0.8f64, -1.2, 0.5, 1.5, -0.7];
    let exact = exact_shapley(|p| mlp_at(p, 0), &x, &[0.0; FEATURES]);
    let mut rmse = Vec::new();
    for antithetic in [false, true] {
        let (mut err2, mut se2, mut n, mut outside) = (0.0, 0.0, 0.0, 0);
        for seed in 0..40u64 {
            let body = json!({"features": x, "target": 0, "seed": seed,
                "params": {"permutations": 20, "antithetic": antithetic}});
            let v = ok_json(post_json(&s, "/v1/models/mlp/explain/sampled-shapley", &body).await).await;
            let got = attribution_values(&v);
            let se = numbers(&v["details"]["standard_errors"]);
            for i in 0..FEATURES {
                err2 += (got[i] - exact[i]).powi(2);
                se2 += se[i].powi(2);
                n += 1.0;
                if (got[i] - exact[i]).abs() > 3.0 * se[i] + 1e-6 {
                    outside += 1;
                }
            }
            let total: f64 = got.iter().sum();
            let want = mlp_at(&x, 0) - mlp_at(&[0.0; FEATURES], 0);
            assert!((total - want).abs() < 1e-4, "efficiency: {total} vs {want}");
        }
        let (e, r) = ((err2 / n).sqrt(), (se2 / n).sqrt());
        eprintln!(
            "sampled-shapley on a 5-feature MLP, 20 permutations, 40 seeds, antithetic {antithetic}: \
             RMSE {e:.5}, RMS standard error {r:.5}, ratio {:.2}; {outside} of {n} values beyond 3 SE",
            e / r
        );
        assert!((0.5..=2.0).contains(&(e / r)), "true error {e} vs reported {r}");
        assert!(
            outside as f64 <= 0.1 * n,
            "{outside} of {n} values beyond three standard errors"
        );
        rmse.push(e);
    }
    assert!(rmse[1] <= rmse[0], "antithetic pairs err more: {rmse:?}");
    // Seeded: the same request gives the same bytes; another seed, other values.
    let body = json!({"features": x, "target": 0, "seed": 9, "params": {"permutations": 6}});
    let a = post_json(&s, "/v1/models/mlp/explain/sampled-shapley", &body)
        .await
        .bytes()
        .await
        .unwrap();
    let b = post_json(&s, "/v1/models/mlp/explain/sampled-shapley", &body)
        .await
        .bytes()
        .await
        .unwrap();
    let strip = |b: &[u8]| {
        let mut v: Value = serde_json::from_slice(b).unwrap();
        for volatile in ["id", "stats", "audit_record"] {
            v.as_object_mut().unwrap().remove(volatile);
        }
        // The worker's time, like `stats`, differs from run to run; the passes do not.
        v["details"]["cost"].as_object_mut().unwrap().remove("worker_ms");
        v
    };
    assert_eq!(strip(&a), strip(&b));
    let mut other = body.clone();
    other["seed"] = json!(10);
    let c = ok_json(post_json(&s, "/v1/models/mlp/explain/sampled-shapley", &other).await).await;
    assert_ne!(strip(&a)["attributions"], c["attributions"]);
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_are_explained_by_segments_and_bad_parameters_are_refused() {
    let s = start_models().await;
    let image = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, fashion_png());
    let body = json!({"image": image, "seed": 3, "params": {"segments": 12, "permutations": 4}});
    let v = ok_json(post_json(&s, "/v1/models/fashion-cnn/explain/sampled-shapley", &body).await).await;
    let d = &v["details"];
    let m = d["segments"].as_u64().unwrap() as usize;
    assert_eq!(d["shapley_values"].as_array().unwrap().len(), m);
    assert_eq!(d["segment_map"]["shape"], json!([28, 28]));
    assert!(d["efficiency_gap"].as_f64().unwrap().abs() < 1e-5, "{d}");
    assert!(d["approximation_error"]["relative"].as_f64().unwrap() >= 0.0, "{d}");
    assert_eq!(v["attributions"]["shape"], json!([28, 28]));
    assert_eq!(
        v["stats"]["model_rows"].as_u64().unwrap() as usize,
        4 * (m - 1) + 2,
        "{}",
        v["stats"]
    );
    common::assert_params_refused(
        &s,
        "/v1/models/fashion-cnn/explain/sampled-shapley",
        &body,
        &[
            (json!({"permutations": 0}), "permutations"),
            (json!({"permutations": 1_000_000}), "permutations"),
            (json!({"segments": 1}), "segments"),
            (json!({"segments": 501}), "segments"),
            (json!({"compactness": 21}), "compactness"),
            (json!({"baseline": "token"}), "baseline"),
            (json!({"baseline": "sideways"}), "params.baseline"),
            (json!({"path_count": 3}), "path_count"),
        ],
    )
    .await;
    s.stop().await.unwrap();
}
