//! Anchors (issues 18 and 32): on a model that decides by one feature the anchor is a condition on
//! that feature with precision 1; on 20 held-out breast-cancer inputs, on both bundled models and
//! at the default budget, at least 90% of the answers are anchors whose precision holds on fresh
//! samples from the same distribution (drawn here by rejection, the service draws them exactly),
//! each answer's reported precision within three standard errors of the fresh one and its
//! coverage the share of background rows the rule covers; bad parameters are refused.

use crate::common;

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

/// `n` samples from anchors' perturbation distribution conditioned on `anchor`, drawn another
/// way than the service draws them (by rejection): a background row with each feature, with
/// probability 1/4, taken from another random background row, kept when it satisfies the rule.
fn conditioned_samples(
    anchor: &[Value],
    features: &[String],
    background: &[Vec<f32>],
    n: usize,
    rng: &mut Rng,
) -> Vec<f32> {
    let pick = |rng: &mut Rng| (rng.next_u64() % background.len() as u64) as usize;
    let mut rows = Vec::with_capacity(n * features.len());
    let (mut kept, mut tries) = (0, 0u64);
    while kept < n {
        tries += 1;
        assert!(tries < 50_000_000, "the rule {anchor:?} is (almost) never met");
        let mut row = background[pick(rng)].clone();
        for f in 0..row.len() {
            if rng.uniform(0.0, 1.0) < 0.25 {
                row[f] = background[pick(rng)][f];
            }
        }
        if satisfies(anchor, features, &row) {
            rows.extend(row);
            kept += 1;
        }
    }
    rows
}

/// Issue 32: on 20 held-out breast-cancer inputs, with the default parameters (the service's
/// default budget of 4,096 rows), at least 90% of the answers on each bundled model are anchors
/// (`meets_threshold`) whose precision on 4,000 fresh samples from the same distribution is at
/// least 0.95 (less two standard errors of that estimate, 0.007); every reported precision lies
/// within three standard errors of the fresh one, the coverage is the share of background rows
/// the rule covers, and each answer (the whole request, on the test's unoptimised build of the
/// crate) takes under 2 s; they take 0.02-0.05 s on a 2-core machine. Before anchors reused
/// samples across rules, none of the 40 answers met the threshold (one-condition rules at about
/// the base rate, the whole budget spent on the first round).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anchors_meet_their_threshold_on_breast_cancer_within_the_default_budget() {
    let s = start(test_config(&root().join("models"))).await;
    let inputs: Vec<Vec<f32>> = breast_cancer_holdout().into_iter().take(20).collect();
    for (model, input, output) in [
        ("breast-cancer", "input", "logits"),
        ("breast-cancer-forest", "X", "probabilities"),
    ] {
        let features = tabular_features(&s, model).await;
        let background = read_background(&root().join("models").join(model).join("background.csv"));
        let mut session = runner().session(&bundled_model(model)).unwrap();
        let mut rng = Rng::new(77);
        let (mut met, mut times, mut report) = (0, Vec::new(), String::new());
        for (i, x) in inputs.iter().enumerate() {
            let began = std::time::Instant::now();
            let v = ok_json(
                post_json(
                    &s,
                    &format!("/v1/models/{model}/explain/anchors"),
                    &json!({"features": x, "seed": 3}),
                )
                .await,
            )
            .await;
            times.push(began.elapsed().as_secs_f64());
            let d = &v["details"];
            let anchor = d["anchor"].as_array().unwrap().clone();
            let label = d["prediction"]["index"].as_u64().unwrap() as usize;
            let (p, n) = (
                d["precision"].as_f64().unwrap(),
                d["precision_samples"].as_f64().unwrap(),
            );
            assert!(n > 0.0, "{d}");
            let covered = background.iter().filter(|r| satisfies(&anchor, &features, r)).count();
            assert!(
                (d["coverage"].as_f64().unwrap() - covered as f64 / background.len() as f64).abs() < 1e-12,
                "{d}"
            );
            let fresh_n = 4_000;
            let rows = conditioned_samples(&anchor, &features, &background, fresh_n, &mut rng);
            let (_, scores) = run_output(&mut session, &[(input, vec![fresh_n, features.len()], rows)], output);
            let hits = scores.chunks(2).filter(|l| usize::from(l[1] > l[0]) == label).count();
            let fresh = hits as f64 / fresh_n as f64;
            // Both estimate one precision: its standard error from both samples pooled.
            let pooled = (p * n + fresh * fresh_n as f64) / (n + fresh_n as f64);
            let se = (pooled * (1.0 - pooled) * (1.0 / n + 1.0 / fresh_n as f64)).sqrt();
            assert!(
                (p - fresh).abs() <= 3.0 * se + 1e-9,
                "{model} input {i}: reported {p} on {n} samples, fresh {fresh} on {fresh_n} (3 SE = {}); {d}",
                3.0 * se
            );
            let threshold = 0.95;
            let tolerance = 2.0 * (threshold * (1.0 - threshold) / fresh_n as f64).sqrt();
            let meets = d["meets_threshold"] == true && fresh >= threshold - tolerance;
            met += usize::from(meets);
            report += &format!(
                "\n  input {i}: {} conditions, precision {p:.3} (fresh {fresh:.3}), coverage {}, meets {meets}, {:.2} s, {} rows",
                anchor.len(),
                d["coverage"],
                times[i],
                d["samples"]
            );
        }
        times.sort_by(f64::total_cmp);
        let (median, max) = (times[times.len() / 2], times[times.len() - 1]);
        println!(
            "{model}: {met}/{} anchors meet 0.95 on fresh samples; median {median:.2} s, max {max:.2} s{report}",
            inputs.len()
        );
        assert!(
            met * 10 >= inputs.len() * 9,
            "{model}: {met}/{} met 0.95{report}",
            inputs.len()
        );
        assert!(max < 2.0, "{model}: an answer took {max:.2} s{report}");
    }
    s.stop().await.unwrap();
}
