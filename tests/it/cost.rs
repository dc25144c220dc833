//! What an answer cost, in pass units (`details.cost`), counted where the runtime runs its
//! passes; and the stopping rules that spend fewer of them: Integrated Gradients refined until its
//! convergence delta is within `delta_tolerance`. A real server on loopback, the bundled CNN.

use crate::common;

use base64::Engine;
use common::*;
use serde_json::{json, Value};

async fn explain(s: &explaind::Service, method: &str, body: Value) -> Value {
    ok_json(post_json(s, &format!("/v1/models/fashion-cnn/explain/{method}"), &body).await).await
}

fn image() -> String {
    base64::engine::general_purpose::STANDARD.encode(fashion_png())
}

/// The answer's cost, checked against the rows its `stats` counted on the method's workbench: the
/// runtime's count and the method's agree.
fn cost(answer: &Value) -> &Value {
    let cost = &answer["details"]["cost"];
    assert!(cost.is_object(), "no details.cost: {answer}");
    let backward: u64 = cost["backward_rows"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(
        cost["forward_rows"].as_u64().unwrap() + backward,
        answer["stats"]["model_rows"].as_u64().unwrap(),
        "{cost}"
    );
    assert_eq!(cost["passes"], answer["stats"]["model_runs"], "{cost}");
    assert!(cost["worker_ms"].as_f64().unwrap() > 0.0, "{cost}");
    cost
}

#[tokio::test]
async fn every_answer_states_its_cost_in_passes() {
    let s = start_bundled().await;
    let img = image();
    // Integrated Gradients, 8 points for target 3: 8 backward rows; forward, the input's scores
    // and the baseline's.
    let ig = explain(
        &s,
        "integrated-gradients",
        json!({"image": img, "target": 3, "params": {"steps": 8}}),
    )
    .await;
    let c = cost(&ig);
    assert_eq!(c["backward_rows"], json!({"exact": 8}), "{c}");
    assert_eq!(c["forward_rows"], 2, "{c}");
    // Saliency for the top class: one backward pass that also chose the class, nothing else.
    let sal = explain(&s, "saliency", json!({"image": img})).await;
    let c = cost(&sal);
    assert_eq!(c["backward_rows"], json!({"exact": 1}), "{c}");
    assert_eq!(
        (c["forward_rows"].as_u64(), c["passes"].as_u64()),
        (Some(0), Some(1)),
        "{c}"
    );
    // Guided backpropagation counts under its own rule set.
    let guided = explain(&s, "guided-backprop", json!({"image": img, "target": 1})).await;
    let c = cost(&guided);
    assert_eq!(
        c["backward_rows"],
        json!({"relu_masked_by_input_and_gradient": 1}),
        "{c}"
    );
    // A forward-only sampler: its masks and the input's scores, no backward rows.
    let rise = explain(&s, "rise", json!({"image": img, "target": 1, "params": {"masks": 40}})).await;
    let c = cost(&rise);
    assert_eq!(
        (c["forward_rows"].as_u64(), c["backward_rows"].clone()),
        (Some(41), json!({})),
        "{c}"
    );
    // Several targets: each target's details carry the whole answer's cost.
    let two = explain(&s, "saliency", json!({"image": img, "target": [1, 2]})).await;
    let list = two["explanations"].as_array().unwrap();
    assert_eq!(list[0]["details"]["cost"], list[1]["details"]["cost"]);
    assert_eq!(list[0]["details"]["cost"]["backward_rows"], json!({"exact": 2}));
    // The document states it for every method.
    let doc = get_json(&s, "/openapi.json").await;
    let details = &doc["components"]["schemas"]["TargetExplanation.saliency"]["properties"]["details"]["$ref"];
    let name = details.as_str().unwrap().rsplit('/').next().unwrap();
    assert!(
        doc["components"]["schemas"][name]["properties"]["cost"].is_object(),
        "{name}"
    );
}

#[tokio::test]
async fn integrated_gradients_refines_until_its_delta_is_within_tolerance() {
    let s = start_bundled().await;
    let img = image();
    let body = |params: Value| json!({"image": img, "target": 3, "params": params});
    // A tolerance met at some level stops there, with the points used in details and as rows.
    let loose = explain(
        &s,
        "integrated-gradients",
        body(json!({"delta_tolerance": 0.05, "steps": 257})),
    )
    .await;
    let d = &loose["details"];
    let steps = d["steps"].as_u64().unwrap();
    assert_eq!(d["stopped"], "tolerance", "{d}");
    assert!([5, 9, 17, 33, 65, 129, 257].contains(&steps), "{d}");
    assert!(d["relative_delta"].as_f64().unwrap() <= 0.05, "{d}");
    assert_eq!(d["cost"]["backward_rows"]["exact"].as_u64(), Some(steps), "{d}");
    // The answer is the trapezoid rule on that many points, run in one go: the refinement reuses
    // its passes without changing the result.
    let fixed = explain(
        &s,
        "integrated-gradients",
        body(json!({"steps": steps, "integration": "riemann_trapezoid"})),
    )
    .await;
    let (a, b) = (attribution_values(&loose), attribution_values(&fixed));
    let scale = b.iter().fold(0f64, |m, v| m.max(v.abs()));
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() <= 1e-4 * scale, "{x} vs {y}");
    }
    let relative = |v: &Value| v["convergence_delta"].as_f64().unwrap().abs();
    assert!((relative(&loose) - relative(&fixed)).abs() <= 1e-4 * (1.0 + relative(&fixed)));
    // A tolerance not met within `steps` stops at the last level that fits: 17 points of at most 20.
    let tight = explain(
        &s,
        "integrated-gradients",
        body(json!({"delta_tolerance": 1e-9, "steps": 20})),
    )
    .await;
    assert_eq!(tight["details"]["stopped"], "steps");
    assert_eq!(tight["details"]["steps"], 17);
    assert_eq!(tight["details"]["cost"]["backward_rows"]["exact"], 17);
    // Bounds and combinations are refused.
    for params in [
        json!({"delta_tolerance": 0}),
        json!({"delta_tolerance": 2}),
        json!({"delta_tolerance": 0.1, "smooth_grad": {}}),
    ] {
        let r = post_json(&s, "/v1/models/fashion-cnn/explain/integrated-gradients", &body(params)).await;
        assert_eq!(r.status(), reqwest::StatusCode::BAD_REQUEST);
    }
}

/// Root mean square of `a - b`.
fn rms_gap(a: &[f64], b: &[f64]) -> f64 {
    (a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f64>() / a.len() as f64).sqrt()
}

/// The true error of `short` against a long run of the same method (another seed), over the one
/// `short` reports: an honest standard error puts it near 1 (within 2x either way).
fn honesty(short: &Value, long: &Value) -> f64 {
    let reported = short["details"]["standard_error"]["rms"].as_f64().unwrap();
    let truth = rms_gap(&attribution_values(short), &attribution_values(long));
    truth / reported
}

#[tokio::test]
async fn samplers_report_honest_errors_and_stop_at_their_tolerance() {
    let s = start_bundled().await;
    let img = image();
    let run = |method: &'static str, seed: u64, params: Value| {
        // The top class: a class the model gives almost no probability would leave RISE's scores a
        // rare, heavy-tailed event.
        let body = json!({"image": img, "seed": seed, "params": params});
        let s = &s;
        async move { explain(s, method, body).await }
    };
    for (method, key, short, long) in [("smoothgrad", "samples", 32, 2048), ("rise", "masks", 256, 4096)] {
        let a = run(method, 5, json!({key: short})).await;
        let reference = run(method, 6, json!({key: long})).await;
        let ratio = honesty(&a, &reference);
        eprintln!("{method}: {short} draws, true error / reported {ratio:.3}");
        assert!((0.5..=2.0).contains(&ratio), "{method}: true error / reported {ratio}");
        assert_eq!(a["details"]["samples"], short, "{method}");
        assert_eq!(a["details"]["stopped"], key, "{method}");
        // `"auto"` stops at the first round whose errors meet the tolerance, and reports it; asking
        // for that many gives the same bytes (the draws do not depend on the rounds).
        let tolerance = match method {
            "smoothgrad" => 0.2,
            _ => 0.02,
        };
        let auto = run(method, 5, json!({key: "auto", "tolerance": tolerance})).await;
        let d = &auto["details"];
        assert_eq!(d["stopped"], "tolerance", "{method}: {d}");
        let used = d["samples"].as_u64().unwrap();
        let within = match method {
            "smoothgrad" => d["standard_error"]["relative"].as_f64().unwrap(),
            _ => d["standard_error"]["max"].as_f64().unwrap(),
        };
        assert!(within <= tolerance, "{method}: {d}");
        let rows = match method {
            "smoothgrad" => d["cost"]["backward_rows"]["exact"].as_u64(),
            _ => d["cost"]["forward_rows"].as_u64().map(|r| r - 1),
        };
        assert_eq!(rows, Some(used), "{method}: {d}");
        let fixed = run(method, 5, json!({key: used})).await;
        assert_eq!(fixed["attributions"], auto["attributions"], "{method}");
        assert_eq!(fixed["details"]["standard_error"], d["standard_error"], "{method}");
        // A tighter tolerance takes more draws; the same request, the same bytes. (RISE's Sobol
        // masks can halve their error from one doubling to the next: a quarter.)
        let tighter_tolerance = tolerance / if method == "rise" { 4.0 } else { 2.0 };
        let tighter = run(method, 5, json!({key: "auto", "tolerance": tighter_tolerance})).await;
        assert!(tighter["details"]["samples"].as_u64().unwrap() > used, "{method}");
        let again = run(method, 5, json!({key: "auto", "tolerance": tighter_tolerance})).await;
        assert_eq!(again["attributions"], tighter["attributions"], "{method}");
    }
}

#[tokio::test]
async fn low_discrepancy_samplers_are_seeded_and_used_with_honest_replicate_errors() {
    let s = start_bundled().await;
    let img = image();
    let run = |method: &'static str, seed: u64, params: Value| {
        let body = json!({"image": img, "seed": seed, "params": params});
        let s = &s;
        async move { explain(s, method, body).await }
    };
    let cases = [
        ("rise", "masks", "halton", 256),
        ("rise", "masks", "sobol", 256),
        ("smoothgrad", "samples", "sobol", 32),
        ("smoothgrad", "samples", "orthogonal", 32),
    ];
    for (method, key, sequence, short) in cases {
        let named = |n: Value| json!({key: n, "sequence": sequence});
        let a = run(method, 5, named(json!(short))).await;
        // The same request, the same bytes; another seed scrambles differently; the sequence named
        // is the one used (not the independent draws of the same seed).
        assert_eq!(
            run(method, 5, named(json!(short))).await["attributions"],
            a["attributions"]
        );
        assert_ne!(
            run(method, 7, named(json!(short))).await["attributions"],
            a["attributions"]
        );
        assert_ne!(
            run(method, 5, json!({key: short, "sequence": "random"})).await["attributions"],
            a["attributions"],
            "{method} {sequence}"
        );
        // The replicates' (or orthogonal blocks') spread is honest against a long run of
        // independent draws.
        let long = if method == "rise" { 4096 } else { 2048 };
        let reference = run(method, 6, json!({key: long})).await;
        let ratio = honesty(&a, &reference);
        eprintln!("{method} {sequence}: {short} draws, true error / reported {ratio:.3}");
        assert!(
            (0.5..=2.0).contains(&ratio),
            "{method} {sequence}: true error / reported {ratio}"
        );
        // `"auto"` stops at a round meeting the tolerance; asking for that many gives the same bytes.
        let (tolerance, within) = match method {
            "rise" => (0.02, "max"),
            _ => (0.2, "relative"),
        };
        let auto = run(
            method,
            5,
            json!({key: "auto", "tolerance": tolerance, "sequence": sequence}),
        )
        .await;
        let d = &auto["details"];
        assert_eq!(d["stopped"], "tolerance", "{d}");
        assert!(d["standard_error"][within].as_f64().unwrap() <= tolerance, "{d}");
        let fixed = run(method, 5, named(d["samples"].clone())).await;
        assert_eq!(fixed["attributions"], auto["attributions"], "{method} {sequence}");
    }
    // Past 32 cells a side the Halton bases run out: refused.
    let r = post_json(
        &s,
        "/v1/models/fashion-cnn/explain/rise",
        &json!({"image": img, "params": {"sequence": "halton", "cell_size": 33}}),
    )
    .await;
    assert_eq!(r.status(), reqwest::StatusCode::BAD_REQUEST);
}
