//! Counterfactuals (issue 18): on a hand-built tree ensemble whose decision regions are known, the
//! tweak found equals the cheapest one an exhaustive enumeration finds (with and without
//! constraints); on the bundled tree ensemble and MLP, every returned counterfactual flips the
//! decision when run through ONNX Runtime and respects every constraint (a property test over
//! seeded inputs and constraints); bad constraints and unreachable classes are refused; a request's
//! constraints only add to or tighten the manifest's, never relax them.

use crate::common;

use common::gradcheck::{run_output, runner};
use common::*;
use explaind::onnx::builder::{Attr, GraphBuilder};
use explaind::onnx::proto::{ModelProto, NodeProto, OperatorSetIdProto};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// Features `a`, `b`; three trees adding to class 1's raw score (classes 0 and 2 stay 0; ties go
/// to class 0), softmax:
/// - `a <= 2`: -1, else +1
/// - `b <= 3`: -1, else +1
/// - `a <= 5`: -0.5, else (`b <= 1`: +0.5, else +3)
///
/// At (1, 1) the score is -2.5 (class 0). Class 1 needs a > 2 and b > 3 (cost 3), or a > 5 with
/// any b (cost 4), and nothing else.
fn ensemble() -> ModelProto {
    let mut g = GraphBuilder::new("trees", 17);
    g.input("input", &[-1, 2]);
    // (tree, node, feature, threshold, true id, false id), all BRANCH_LEQ
    let splits: [(i64, i64, i64, f32, i64, i64); 4] = [
        (0, 0, 0, 2.0, 1, 2),
        (1, 0, 1, 3.0, 1, 2),
        (2, 0, 0, 5.0, 1, 2),
        (2, 2, 1, 1.0, 3, 4),
    ];
    let leaves: [(i64, i64, f32); 7] = [
        (0, 1, -1.0),
        (0, 2, 1.0),
        (1, 1, -1.0),
        (1, 2, 1.0),
        (2, 1, -0.5),
        (2, 3, 0.5),
        (2, 4, 3.0),
    ];
    // Nodes in (tree, node id) order, as converters write them and ONNX Runtime expects.
    let mut all: Vec<(i64, i64, i64, f32, i64, i64, &str)> = splits
        .iter()
        .map(|&(t, n, f, v, yes, no)| (t, n, f, v, yes, no, "BRANCH_LEQ"))
        .collect();
    all.extend(leaves.iter().map(|&(t, n, _)| (t, n, 0, 0.0, 0, 0, "LEAF")));
    all.sort_by_key(|n| (n.0, n.1));
    let tree_ids = all.iter().map(|n| n.0).collect();
    let node_ids = all.iter().map(|n| n.1).collect();
    let features = all.iter().map(|n| n.2).collect();
    let values = all.iter().map(|n| n.3).collect();
    let trues = all.iter().map(|n| n.4).collect();
    let falses = all.iter().map(|n| n.5).collect();
    let modes = all.iter().map(|n| n.6.to_string()).collect();
    // Three classes, 0 and 2 weighted zero at every leaf: ONNX Runtime treats a two-class
    // ensemble as a binary classifier with its own scoring, which this test does not need.
    let (mut ids, mut nodes, mut trees, mut weights) = (vec![], vec![], vec![], vec![]);
    for &(t, n, w) in &leaves {
        for (class, weight) in [(0, 0.0), (1, w), (2, 0.0)] {
            ids.push(class);
            nodes.push(n);
            trees.push(t);
            weights.push(weight);
        }
    }
    let attrs = vec![
        ("class_ids", Attr::Ints(ids)),
        ("class_nodeids", Attr::Ints(nodes)),
        ("class_treeids", Attr::Ints(trees)),
        ("class_weights", Attr::Floats(weights)),
        ("classlabels_int64s", Attr::Ints(vec![0, 1, 2])),
        ("nodes_falsenodeids", Attr::Ints(falses)),
        ("nodes_featureids", Attr::Ints(features)),
        ("nodes_modes", Attr::Strs(modes)),
        ("nodes_nodeids", Attr::Ints(node_ids)),
        ("nodes_treeids", Attr::Ints(tree_ids)),
        ("nodes_truenodeids", Attr::Ints(trues)),
        ("nodes_values", Attr::Floats(values)),
        ("post_transform", Attr::Str("SOFTMAX".into())),
    ];
    g.output_any("probabilities");
    let mut model = g.build();
    let graph = model.graph.as_mut().unwrap();
    graph.node.push(NodeProto {
        name: Some("trees".into()),
        op_type: Some("TreeEnsembleClassifier".into()),
        domain: Some("ai.onnx.ml".into()),
        input: vec!["input".into()],
        output: vec!["label".into(), "probabilities".into()],
        attribute: attrs
            .into_iter()
            .map(|(n, v)| explaind::onnx::builder::attribute(n, v))
            .collect(),
        ..Default::default()
    });
    model.opset_import.push(OperatorSetIdProto {
        domain: Some("ai.onnx.ml".into()),
        version: Some(3),
    });
    model
}

const TREES_MANIFEST: &str = r#"task = "tabular-classification"
output = "probabilities"
scores = "probabilities"
labels = ["no", "yes", "other"]

[tabular]
features = ["a", "b"]
"#;

/// The cheapest input the ensemble decides as class 1, over every combination of each feature's
/// own value, the thresholds and the floats next to them (every region's nearest corner is among
/// them), run through ONNX Runtime; `allowed` filters each feature's values. Returns the least
/// cost and every input that reaches it.
fn enumerate_cheapest(x: [f32; 2], allowed: impl Fn(usize, f32) -> bool) -> Option<(f64, Vec<[f32; 2]>)> {
    let thresholds = [vec![2.0f32, 5.0], vec![1.0f32, 3.0]];
    let mut options: Vec<Vec<f32>> = Vec::new();
    for i in 0..2 {
        let mut v = vec![x[i]];
        for &t in &thresholds[i] {
            v.extend([t, next(t, 1), next(t, -1), t.floor(), t.floor() + 1.0]);
        }
        v.retain(|&c| allowed(i, c));
        options.push(v);
    }
    let mut rows = Vec::new();
    for &a in &options[0] {
        for &b in &options[1] {
            rows.push([a, b]);
        }
    }
    let model = ensemble();
    let mut session = runner().session(&model).unwrap();
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    let (_, probs) = run_output(&mut session, &[("input", vec![rows.len(), 2], flat)], "probabilities");
    let valid: Vec<(f64, [f32; 2])> = rows
        .iter()
        .enumerate()
        .filter(|(r, _)| probs[r * 3 + 1] > probs[r * 3])
        .map(|(_, y)| {
            let cost = (f64::from(y[0]) - f64::from(x[0])).abs() + (f64::from(y[1]) - f64::from(x[1])).abs();
            (cost, *y)
        })
        .collect();
    let least = valid.iter().map(|v| v.0).min_by(f64::total_cmp)?;
    Some((least, valid.into_iter().filter(|v| v.0 == least).map(|v| v.1).collect()))
}

/// The float next to positive `t`, above (`1`) or below (`-1`).
fn next(t: f32, way: i32) -> f32 {
    f32::from_bits(t.to_bits().wrapping_add_signed(way))
}

/// Which values feature `i` may take, as a request's constraints say.
type Allowed = Box<dyn Fn(usize, f32) -> bool>;

fn counterfactuals(v: &Value) -> Vec<Value> {
    v["details"]["counterfactuals"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tree_tweaks_equal_the_cheapest_found_by_enumeration() {
    let dir = temp_dir("cf-trees");
    write_model(&dir, "trees", &ensemble(), TREES_MANIFEST);
    let s = start(test_config(&dir)).await;
    let x = [1.0f32, 1.0];
    // (request constraints, the same as a filter on values)
    let cases: Vec<(Value, Allowed)> = vec![
        (json!({}), Box::new(|_, _| true)),
        (json!({"immutable": ["b"]}), Box::new(|i, v| i != 1 || v == 1.0)),
        (json!({"integer": ["a", "b"]}), Box::new(|_, v: f32| v.fract() == 0.0)),
        (json!({"max": {"b": 3.0}}), Box::new(|i, v| i != 1 || v <= 3.0)),
    ];
    for (constraints, allowed) in cases {
        let (cost, best) = enumerate_cheapest(x, allowed).expect("the enumeration finds one");
        let v = ok_json(
            post_json(
                &s,
                "/v1/models/trees/explain/counterfactual",
                &json!({"features": x, "params": {"target_class": "yes", "constraints": constraints}}),
            )
            .await,
        )
        .await;
        let found = counterfactuals(&v);
        assert!(!found.is_empty(), "{constraints}: {v}");
        let got: Vec<f32> = found[0]["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        assert!(
            best.iter().any(|b| b.to_vec() == got),
            "{constraints}: cost {cost} by enumeration at {best:?}; {}",
            found[0]
        );
        assert!(
            (found[0]["cost"].as_f64().unwrap() - cost).abs() < 1e-9,
            "{constraints}"
        );
        assert_eq!(found[0]["prediction"]["label"], "yes");
        assert_eq!(v["details"]["target_class"]["label"], "yes");
    }
    // As a picture: "what would change the decision", a text panel.
    let r = post_json(
        &s,
        "/v1/models/trees/explain/counterfactual",
        &json!({"features": x, "params": {"target_class": "yes"}, "format": "png"}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "image/png");
    let png = image::load_from_memory(&r.bytes().await.unwrap()).unwrap().to_rgb8();
    assert!(png.width() >= 240 && png.height() > 60, "{:?}", png.dimensions());
    assert!(png.pixels().any(|p| p.0 == [0, 0, 0]), "no text drawn");
    // As an HTML fragment for a page to embed: the same changes as a table.
    let json = ok_json(
        post_json(
            &s,
            "/v1/models/trees/explain/counterfactual",
            &json!({"features": x, "params": {"target_class": "yes"}}),
        )
        .await,
    )
    .await;
    let r = post_json(
        &s,
        "/v1/models/trees/explain/counterfactual",
        &json!({"features": x, "params": {"target_class": "yes"}, "format": "html"}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "text/html; charset=utf-8");
    let html = r.text().await.unwrap();
    assert!(
        html.starts_with("<section class=\"explaind-decision\">") && html.contains("change it to yes"),
        "{html}"
    );
    for change in counterfactuals(&json)[0]["changes"].as_array().unwrap() {
        let feature = change["feature"].as_str().unwrap();
        assert!(
            html.contains(&format!("<tr><td>{feature}</td>")),
            "{feature} missing: {html}"
        );
    }
    // Methods without a decision to draw refuse it.
    let p = problem(
        post_json(
            &s,
            "/v1/models/trees/explain/tree-shap",
            &json!({"features": x, "format": "html"}),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid-request",
    )
    .await;
    assert!(p["detail"].as_str().unwrap().contains("format=html"), "{p}");
    // No way to class 1 when `a` may not rise: 200, an empty list and the reason.
    let v = ok_json(
        post_json(
            &s,
            "/v1/models/trees/explain/counterfactual",
            &json!({"features": x, "params": {"target_class": 1, "constraints": {"monotone": {"a": "decrease"}}}}),
        )
        .await,
    )
    .await;
    assert!(counterfactuals(&v).is_empty(), "{v}");
    assert!(v["details"]["reason"]
        .as_str()
        .unwrap()
        .contains("no valid counterfactual"));
    // Class 0 gains from no leaf: unreachable, refused naming it.
    let p = problem(
        post_json(
            &s,
            "/v1/models/trees/explain/counterfactual",
            &json!({"features": [9.0, 9.0], "params": {"target_class": "no"}}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid-input",
    )
    .await;
    assert!(p["detail"].as_str().unwrap().contains("`no` is unreachable"), "{p}");
    // Constraints naming unknown features, a min above its max, an unknown class: 400 naming them.
    assert_params_refused(
        &s,
        "/v1/models/trees/explain/counterfactual",
        &json!({"features": x}),
        &[
            (
                json!({"constraints": {"immutable": ["c", "a"], "integer": ["d"]}}),
                "unknown features: c, d",
            ),
            (
                json!({"constraints": {"min": {"a": 4.0}, "max": {"a": 3.0}}}),
                "`a`: min 4 is above max 3",
            ),
            (json!({"target_class": "maybe"}), "`maybe` is not a label"),
            (json!({"target_class": 7}), "7 is not a class"),
            (json!({"count": 11}), "count"),
            (json!({"diversity_weight": 101.0}), "diversity_weight"),
        ],
    )
    .await;
    s.stop().await.unwrap();
}

/// The constraints an answer reports as in force (`details.constraints`, and the `params` echo).
fn in_force(v: &Value) -> &Value {
    assert_eq!(v["details"]["constraints"], v["params"]["constraints"], "{v}");
    &v["details"]["constraints"]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_constraints_only_add_to_or_tighten_the_manifests() {
    let dir = temp_dir("cf-policy");
    // `a` may only fall (so class 1 is out of reach from (1, 1)) and `b` stays in [0, 10] ...
    let policy = "[tabular.constraints]\nmonotone = { a = \"decrease\" }\nmin = { b = 0.0 }\nmax = { b = 10.0 }\n";
    write_model(&dir, "policy", &ensemble(), &format!("{TREES_MANIFEST}\n{policy}"));
    // ... and here `b` is fixed and `a` at most 8: class 1 only through a > 5.
    let fixed = "[tabular.constraints]\nimmutable = [\"b\"]\nmax = { a = 8.0 }\n";
    write_model(&dir, "fixed", &ensemble(), &format!("{TREES_MANIFEST}\n{fixed}"));
    let s = start(test_config(&dir)).await;
    let x = [1.0f32, 1.0];
    let ask = |model: &str, constraints: Value| {
        let body = json!({"features": x, "params": {"target_class": "yes", "constraints": constraints}});
        let path = format!("/v1/models/{model}/explain/counterfactual");
        let s = &s;
        async move { post_json(s, &path, &body).await }
    };
    // Relaxing: a monotone direction flipped, a min lowered, a max raised: 422 naming each.
    for (model, constraints, says) in [
        (
            "policy",
            json!({"monotone": {"a": "increase"}}),
            vec!["`a`: monotone `increase`", "manifest's `decrease`"],
        ),
        (
            "policy",
            json!({"min": {"b": -5.0}}),
            vec!["`b`: min -5", "manifest's min 0"],
        ),
        (
            "policy",
            json!({"max": {"b": 20.0}, "min": {"b": -1.0}}),
            vec!["`b`: max 20", "manifest's max 10", "`b`: min -1"],
        ),
        (
            "fixed",
            json!({"max": {"a": 9.0}}),
            vec!["`a`: max 9", "manifest's max 8"],
        ),
        // Tightening past the manifest's other bound leaves nothing: refused too.
        (
            "policy",
            json!({"min": {"b": 12.0}}),
            vec!["`b`: min 12 is above max 10"],
        ),
    ] {
        let p = problem(
            ask(model, constraints.clone()).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-input",
        )
        .await;
        let detail = p["detail"].as_str().unwrap();
        for said in says {
            assert!(detail.contains(said), "{model} {constraints}: {detail} lacks {said}");
        }
    }
    // Adding and tightening: accepted, and the answer reports the constraints in force.
    let v = ok_json(
        ask(
            "policy",
            json!({"monotone": {"a": "decrease", "b": "increase"}, "min": {"b": 0.5}, "max": {"b": 8.0},
                   "integer": ["b"]}),
        )
        .await,
    )
    .await;
    assert_eq!(
        in_force(&v),
        &json!({"immutable": [], "integer": ["b"], "monotone": {"a": "decrease", "b": "increase"},
                "min": {"b": 0.5}, "max": {"b": 8.0}, "costs": {}})
    );
    assert!(counterfactuals(&v).is_empty(), "`a` may not rise: {v}");
    // An immutable feature stays put whatever a request says of it; the request's own bound on `a`
    // tightens the manifest's.
    let v = ok_json(
        ask(
            "fixed",
            json!({"immutable": ["b"], "monotone": {"b": "increase"}, "min": {"b": 4.0}, "max": {"a": 7.0}}),
        )
        .await,
    )
    .await;
    assert_eq!(
        in_force(&v),
        &json!({"immutable": ["b"], "integer": [], "monotone": {"b": "increase"},
                "min": {"b": 4.0}, "max": {"a": 7.0}, "costs": {}})
    );
    let found = counterfactuals(&v);
    assert!(!found.is_empty(), "{v}");
    for cf in &found {
        let y = cf["values"].as_array().unwrap();
        assert_eq!(y[1].as_f64(), Some(1.0), "`b` is immutable: {cf}");
        let a = y[0].as_f64().unwrap();
        assert!(a > 5.0 && a <= 7.0, "{cf}");
    }
    // Without request constraints the manifest's are in force as declared.
    let v = ok_json(ask("fixed", json!({})).await).await;
    assert_eq!(
        in_force(&v),
        &json!({"immutable": ["b"], "integer": [], "monotone": {}, "min": {}, "max": {"a": 8.0}, "costs": {}})
    );
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_counterfactual_flips_the_decision_and_keeps_the_constraints() {
    let s = start(test_config(&root().join("models"))).await;
    let features = tabular_features(&s, "breast-cancer").await;
    let runner = runner();
    let mut rng = Rng::new(41);
    let mut answered = 0;
    let inputs = breast_cancer_holdout();
    for (x, model) in inputs
        .iter()
        .take(12)
        .zip(["breast-cancer-forest", "breast-cancer"].iter().cycle())
    {
        // Seeded constraints: a few immutable features, one monotone each way, bounds around x,
        // and whole numbers for one feature.
        let pick = |rng: &mut Rng| (rng.next_u64() % features.len() as u64) as usize;
        let immutable: Vec<usize> = (0..3).map(|_| pick(&mut rng)).collect();
        let (up, down, bounded, whole) = (pick(&mut rng), pick(&mut rng), pick(&mut rng), pick(&mut rng));
        let lo = f64::from(x[bounded]) - rng.uniform(0.0, 1.0) as f64 * f64::from(x[bounded]).abs();
        let hi = f64::from(x[bounded]) + rng.uniform(0.0, 1.0) as f64 * f64::from(x[bounded]).abs();
        let mut constraints = json!({
            "immutable": immutable.iter().map(|&i| &features[i]).collect::<Vec<_>>(),
            "monotone": {},
            "min": {&features[bounded]: lo},
            "max": {&features[bounded]: hi},
            "integer": [],
        });
        if !immutable.contains(&up) {
            constraints["monotone"][&features[up]] = json!("increase");
        }
        if !immutable.contains(&down) && down != up {
            constraints["monotone"][&features[down]] = json!("decrease");
        }
        if x[whole].fract() == 0.0 {
            constraints["integer"] = json!([&features[whole]]);
        }
        let v = ok_json(
            post_json(
                &s,
                &format!("/v1/models/{model}/explain/counterfactual"),
                &json!({"features": x, "params": {"count": 3, "constraints": constraints}}),
            )
            .await,
        )
        .await;
        let details = &v["details"];
        let target = details["target_class"]["index"].as_u64().unwrap() as usize;
        let found = counterfactuals(&v);
        if found.is_empty() {
            assert!(details["reason"].is_string(), "{details}");
            continue;
        }
        answered += 1;
        let mut session = runner.session(&bundled_model(model)).unwrap();
        let (input, output) = if *model == "breast-cancer" {
            ("input", "logits")
        } else {
            ("X", "probabilities")
        };
        if found.len() > 1 {
            // DiCE's diversity: the mean pairwise cost between the answers (distinct, so above 0).
            assert!(details["diversity"].as_f64().unwrap() > 0.0, "{details}");
        }
        for cf in &found {
            let y: Vec<f32> = cf["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect();
            assert_eq!(cf["valid"], true);
            let (_, scores) = run_output(&mut session, &[(input, vec![1, y.len()], y.clone())], output);
            let decided = (0..scores.len())
                .max_by(|a, b| scores[*a].total_cmp(&scores[*b]))
                .unwrap();
            assert_eq!(decided, target, "{model}: {cf}");
            for &i in &immutable {
                assert_eq!(y[i], x[i], "{model}: immutable {} changed", features[i]);
            }
            if let Some(d) = constraints["monotone"].get(&features[up]).and_then(Value::as_str) {
                assert!(d != "increase" || y[up] >= x[up], "{model}: {} went down", features[up]);
            }
            if let Some(d) = constraints["monotone"].get(&features[down]).and_then(Value::as_str) {
                assert!(
                    d != "decrease" || y[down] <= x[down],
                    "{model}: {} went up",
                    features[down]
                );
            }
            let b = f64::from(y[bounded]);
            assert!(
                b >= lo - 1e-6 && b <= hi + 1e-6,
                "{model}: {} = {b} outside [{lo}, {hi}]",
                features[bounded]
            );
            if x[whole].fract() == 0.0 {
                assert_eq!(y[whole].fract(), 0.0, "{model}: {} not whole", features[whole]);
            }
            // The answer's changes list exactly the features that differ.
            let changed: Vec<&str> = cf["changes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["feature"].as_str().unwrap())
                .collect();
            let differ: Vec<&str> = (0..x.len())
                .filter(|&i| y[i] != x[i])
                .map(|i| features[i].as_str())
                .collect();
            assert_eq!(changed, differ, "{model}");
        }
    }
    assert!(answered >= 6, "only {answered} of 12 inputs got a counterfactual");
    s.stop().await.unwrap();
}
