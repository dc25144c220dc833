//! Integer, boolean and multi-input graphs (issue 35 item 2): an int64 tabular model served and
//! explained (KernelSHAP equal to the exact linear SHAP values, LIME, anchors and counterfactuals
//! drawing only the values its features take), its features checked on the way in; a model with
//! two constant side inputs (a scale without a batch axis, a mask with one) answering as the
//! one-input model with both folded into its weights; gradient methods refused with one reason in
//! the model report and at request time; bad manifests refused naming the input. Real servers on
//! loopback, models written with the project's graph builder.

use crate::common;
use common::*;
use explaind::onnx::builder::{Attr, GraphBuilder};
use explaind::onnx::proto::data_type;
use reqwest::StatusCode;
use serde_json::{json, Value};

const FEATURES: [&str; 4] = ["items", "colour", "age", "flag"];
/// Class `b`'s score weights; class `a`'s score is its negative.
const W: [f32; 4] = [0.5, 2.0, -0.25, 1.0];
const BIAS: f32 = 0.5;
/// Background rows: whole numbers, `colour` among 0, 1, 2 and `flag` among 0, 1.
const BACKGROUND: [[f32; 4]; 6] = [
    [0., 0., 20., 0.],
    [2., 1., 35., 1.],
    [5., 2., 60., 0.],
    [7., 0., 45., 1.],
    [10., 1., 30., 0.],
    [4., 2., 50., 1.],
];
/// The explained row: class `a` (score of `b` = 1.5 + 4 - 10 + 1 + 0.5 = -3).
const X: [f32; 4] = [3., 2., 40., 1.];

/// `counts`: an int64 input `[batch, 4]`, cast to float, `[-s, s]` with `s = x W + BIAS`.
fn write_counts(dir: &std::path::Path) {
    let mut g = GraphBuilder::new("counts", 17);
    let x = g.input_typed("x", data_type::INT64, &[-1, 4]);
    let xf = g.node("Cast", &[&x], vec![("to", Attr::Int(data_type::FLOAT as i64))]);
    let w: Vec<f32> = W.iter().flat_map(|w| [-w, *w]).collect();
    let wn = g.constant("w", &[4, 2], &w);
    let b = g.constant("b", &[2], &[-BIAS, BIAS]);
    let mm = g.node("MatMul", &[&xf, &wn], vec![]);
    g.node("Add", &[&mm, &b], vec![]);
    g.rename_last_output("logits");
    g.output("logits", &[-1, 2]);
    let manifest = format!(
        r#"task = "tabular-classification"
scores = "raw"
labels = ["a", "b"]
[tabular]
features = {FEATURES:?}
background = "background.csv"
[tabular.types]
colour = {{ categories = [0, 1, 2], names = ["red", "green", "blue"] }}
flag = {{ categories = [0, 1] }}
[tabular.constraints]
integer = ["age"]
"#
    );
    write_model(dir, "counts", &g.build(), &manifest);
    let mut csv = FEATURES.join(",") + "\n";
    for r in BACKGROUND {
        csv += &(r.iter().map(f32::to_string).collect::<Vec<_>>().join(",") + "\n");
    }
    std::fs::write(dir.join("counts/background.csv"), csv).unwrap();
}

async fn explain(s: &explaind::Service, model: &str, method: &str, body: Value) -> (StatusCode, Value) {
    let r = post_json(s, &format!("/v1/models/{model}/explain/{method}"), &body).await;
    let status = r.status();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

fn numbers(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// True when `v` is a value feature `i` of `counts` takes.
fn valid(i: usize, v: f64) -> bool {
    v.fract() == 0.0
        && match i {
            1 => [0.0, 1.0, 2.0].contains(&v),
            3 => [0.0, 1.0].contains(&v),
            _ => true,
        }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_int64_tabular_model_is_served_and_explained_by_perturbation() {
    let dir = temp_dir("inputs-counts");
    write_counts(&dir);
    let s = start(test_config(&dir)).await;

    // The report: the input's type and role, the features' types (the constraint's `age` among
    // the integer ones: one source of truth).
    let report: Value = get_json(&s, "/v1/models/counts").await;
    assert_eq!(
        report["inputs"],
        json!([{"name": "x", "dtype": "int64", "role": "explained"}]),
        "{report}"
    );
    let types = &report["tabular"]["types"];
    assert_eq!(types["items"]["type"], "integer", "{types}");
    assert_eq!(types["age"]["type"], "integer", "{types}");
    assert_eq!(types["colour"]["names"], json!(["red", "green", "blue"]), "{types}");
    assert_eq!(
        report["tabular"]["constraints"]["integer"],
        json!(["items", "age"]),
        "{report}"
    );

    // Predict: the request's numbers fed as int64.
    let v = ok_json(post_json(&s, "/v1/models/counts/predict", &json!({"features": X})).await).await;
    let s_b = W.iter().zip(X).map(|(w, x)| w * x).sum::<f32>() + BIAS;
    assert_eq!(
        numbers(&v["outputs"]["logits"]),
        vec![f64::from(-s_b), f64::from(s_b)],
        "{v}"
    );

    // Values the input cannot hold are refused, naming the feature.
    for (features, name, why) in [
        (json!([3.5, 2, 40, 1]), "items", "not a whole number"),
        (json!([3, 7, 40, 1]), "colour", "not one of its categories"),
        (json!([3, 2, 1e12, 1]), "age", "out of the input's range"),
    ] {
        let p = problem(
            post_json(&s, "/v1/models/counts/predict", &json!({"features": features})).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-input",
        )
        .await;
        let detail = p["detail"].as_str().unwrap();
        assert!(
            detail.contains(&format!("feature `{name}`")) && detail.contains(why),
            "{p}"
        );
    }

    // KernelSHAP over every coalition of 4 features and every background row: the exact SHAP
    // values of a linear model, phi_j = w_j (x_j - E[x_j]).
    let (status, v) = explain(
        &s,
        "counts",
        "kernel-shap",
        json!({"features": X, "target": "b", "seed": 1, "params": {"samples": 64, "background_rows": 6}}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let phi = numbers(&v["details"]["shapley_values"]);
    for j in 0..4 {
        let mean = BACKGROUND.iter().map(|r| f64::from(r[j])).sum::<f64>() / BACKGROUND.len() as f64;
        let exact = f64::from(W[j]) * (f64::from(X[j]) - mean);
        assert!(
            (phi[j] - exact).abs() < 1e-3,
            "feature {j}: {} vs exact {exact}: {v}",
            phi[j]
        );
    }

    // LIME draws from the background's values (its quartile bins): it answers, and where the
    // exact SHAP value is clearly signed (items below the mean of a rising feature, colour and
    // flag above), so is LIME's coefficient on the input's bin.
    let (status, v) = explain(
        &s,
        "counts",
        "lime",
        json!({"features": X, "target": "b", "seed": 1, "params": {"samples": 500}}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let lime = attribution_values(&v);
    for (j, sign) in [(0, -1.0), (1, 1.0), (3, 1.0)] {
        assert!(lime[j] * sign > 0.0, "{}: {lime:?}", FEATURES[j]);
    }

    // Counterfactuals: a random search (no gradients here), its answers whole numbers among the
    // categories, deciding `b`.
    let (status, v) = explain(
        &s,
        "counts",
        "counterfactual",
        json!({"features": X, "seed": 3, "params": {"count": 3}}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["params"]["search"], "random", "{v}");
    let found = v["details"]["counterfactuals"].as_array().unwrap();
    assert!(!found.is_empty(), "{v}");
    for cf in found {
        let values = numbers(&cf["values"]);
        assert!(values.iter().enumerate().all(|(i, v)| valid(i, *v)), "{cf}");
        assert_eq!(cf["prediction"]["label"], "b", "{cf}");
    }

    // Anchors: its conditions cut at values the features take.
    let (status, v) = explain(&s, "counts", "anchors", json!({"features": X, "seed": 1})).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    for c in v["details"]["anchor"].as_array().unwrap() {
        let i = FEATURES.iter().position(|f| *f == c["feature"]).unwrap();
        assert!(valid(i, c["value"].as_f64().unwrap()), "{c}");
        // A categorical feature's condition is an equality, named by its category.
        if c["feature"] == "colour" {
            assert_eq!((&c["op"], &c["text"]), (&json!("="), &json!("colour = blue")), "{c}");
        }
        if c["feature"] == "flag" {
            assert_eq!((&c["op"], &c["text"]), (&json!("="), &json!("flag = 1")), "{c}");
        }
    }
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gradient_methods_are_refused_with_one_reason_in_the_report_and_the_request() {
    let dir = temp_dir("inputs-refused");
    write_counts(&dir);
    let s = start(test_config(&dir)).await;
    let report: Value = get_json(&s, "/v1/models/counts").await;
    let methods: Vec<&str> = report["methods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    for m in ["kernel-shap", "lime", "anchors", "counterfactual"] {
        assert!(methods.contains(&m), "{m} missing from {methods:?}");
    }
    for method in ["saliency", "integrated-gradients", "smoothgrad", "deeplift"] {
        assert!(!methods.contains(&method), "{method} offered: {methods:?}");
        let reason = unavailable_reason(&report, method);
        assert!(reason.contains("`x` is int64, not float"), "{reason}");
        let p = problem(
            post_json(
                &s,
                &format!("/v1/models/counts/explain/{method}"),
                &json!({"features": X}),
            )
            .await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "model-not-differentiable",
        )
        .await;
        assert_eq!(p["detail"], reason, "{method}");
    }
    // The counterfactual's gradient search, asked for, is refused with the same text.
    let p = problem(
        post_json(
            &s,
            "/v1/models/counts/explain/counterfactual",
            &json!({"features": X, "params": {"search": "gradient"}}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "model-not-differentiable",
    )
    .await;
    assert_eq!(p["detail"], unavailable_reason(&report, "saliency"));
    s.stop().await.unwrap();
}

/// Class `b`'s weights of the two-input model (class `a`'s: their negatives).
const V: [f32; 3] = [1.0, -2.0, 0.5];
const SCALE: f32 = 2.0;
const MASK: [i64; 3] = [1, 0, 1];

/// The tabular section and background both models share.
fn tabular_section(dir: &std::path::Path, name: &str) -> String {
    std::fs::create_dir_all(dir.join(name)).unwrap();
    std::fs::write(
        dir.join(name).join("background.csv"),
        "p,q,r\n0,0,0\n1,-1,0.5\n-0.5,2,1\n0.25,0.5,-1\n",
    )
    .unwrap();
    "[tabular]\nfeatures = [\"p\", \"q\", \"r\"]\nbackground = \"background.csv\"\n".into()
}

/// `scaled`: `x` `[batch, 3]` times `scale` (a float scalar, no batch axis) times `mask` (int64
/// `[batch, 3]`, cast), then `[-s, s]`; both side inputs constants in the manifest.
fn scaled_graph() -> explaind::onnx::proto::ModelProto {
    let mut g = GraphBuilder::new("scaled", 17);
    let x = g.input("x", &[-1, 3]);
    let scale = g.input("scale", &[]);
    let mask = g.input_typed("mask", data_type::INT64, &[-1, 3]);
    let mf = g.node("Cast", &[&mask], vec![("to", Attr::Int(data_type::FLOAT as i64))]);
    let xs = g.node("Mul", &[&x, &scale], vec![]);
    let xm = g.node("Mul", &[&xs, &mf], vec![]);
    let w: Vec<f32> = V.iter().flat_map(|v| [-v, *v]).collect();
    let wn = g.constant("w", &[3, 2], &w);
    g.node("MatMul", &[&xm, &wn], vec![]);
    g.rename_last_output("logits");
    g.output("logits", &[-1, 2]);
    g.build()
}

const SCALED_INPUTS: &str = r#"[inputs.x]
role = "explained"
[inputs.scale]
role = "constant"
value = 2.0
[inputs.mask]
role = "constant"
value = [1, 0, 1]
"#;

fn write_scaled(dir: &std::path::Path, name: &str, inputs: &str) {
    let tabular = tabular_section(dir, name);
    let manifest = format!("task = \"tabular-classification\"\nlabels = [\"a\", \"b\"]\n{inputs}{tabular}");
    write_model(dir, name, &scaled_graph(), &manifest);
}

/// `folded`: `scaled` with the scale and mask folded into its weights; one input.
fn write_folded(dir: &std::path::Path) {
    let mut g = GraphBuilder::new("folded", 17);
    let x = g.input("x", &[-1, 3]);
    let w: Vec<f32> = (0..3)
        .flat_map(|i| {
            let v = V[i] * SCALE * MASK[i] as f32;
            [-v, v]
        })
        .collect();
    let wn = g.constant("w", &[3, 2], &w);
    g.node("MatMul", &[&x, &wn], vec![]);
    g.rename_last_output("logits");
    g.output("logits", &[-1, 2]);
    let tabular = tabular_section(dir, "folded");
    let manifest = format!("task = \"tabular-classification\"\nlabels = [\"a\", \"b\"]\n{tabular}");
    write_model(dir, "folded", &g.build(), &manifest);
}

fn close(a: &[f64], b: &[f64]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-4 * (1.0 + y.abs()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_with_constant_side_inputs_answers_as_the_model_with_them_folded_in() {
    let dir = temp_dir("inputs-scaled");
    write_scaled(&dir, "scaled", SCALED_INPUTS);
    write_folded(&dir);
    let s = start(test_config(&dir)).await;
    let http = reqwest::Client::new();
    let report: Value = get_json(&s, "/v1/models/scaled").await;
    assert_eq!(
        report["inputs"],
        json!([
            {"name": "x", "dtype": "float32", "role": "explained"},
            {"name": "scale", "dtype": "float32", "role": "constant", "shape": [], "batched": false},
            {"name": "mask", "dtype": "int64", "role": "constant", "shape": [3], "batched": true},
        ]),
        "{report}"
    );
    let x = json!([0.7, -1.2, 0.4]);
    let scaled = ok_json(post_json(&s, "/v1/models/scaled/predict", &json!({"features": x})).await).await;
    let folded = ok_json(post_json(&s, "/v1/models/folded/predict", &json!({"features": x})).await).await;
    assert!(
        close(
            &numbers(&scaled["outputs"]["logits"]),
            &numbers(&folded["outputs"]["logits"])
        ),
        "{scaled} vs {folded}"
    );
    for (method, params) in [
        ("saliency", json!({})),
        ("integrated-gradients", json!({"steps": 16})),
        ("kernel-shap", json!({"samples": 32})),
        ("lime", json!({"samples": 200})),
        ("deeplift", json!({})),
    ] {
        let body = json!({"features": x, "target": "b", "seed": 5, "params": params});
        let (status, a) = explain(&s, "scaled", method, body.clone()).await;
        assert_eq!(status, StatusCode::OK, "{method}: {a}");
        let (_, b) = explain(&s, "folded", method, body).await;
        let (a, b) = (attribution_values(&a), attribution_values(&b));
        assert!(close(&a, &b), "{method}: {a:?} vs folded {b:?}");
    }
    // A job runs the same passes, side inputs fed.
    let body = json!({"model": "scaled", "method": "kernel-shap", "features": x, "target": "b", "seed": 5,
                      "params": {"samples": 32}});
    let r = http.post(url(&s, "/v1/jobs")).json(&body).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let id = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    let job = job_done(&s, &format!("/v1/jobs/{id}"), std::time::Duration::from_secs(60)).await;
    let (_, folded) = explain(
        &s,
        "folded",
        "kernel-shap",
        json!({"features": x, "target": "b", "seed": 5, "params": {"samples": 32}}),
    )
    .await;
    assert!(
        close(&attribution_values(&job["result"]), &attribution_values(&folded)),
        "{job}"
    );
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_roles_are_refused_at_start_naming_the_input() {
    let dir = temp_dir("inputs-bad");
    write_counts(&dir);
    write_scaled(
        &dir,
        "no-such-input",
        &format!("{SCALED_INPUTS}[inputs.nope]\nrole = \"constant\"\nvalue = 1\n"),
    );
    write_scaled(&dir, "short-mask", &SCALED_INPUTS.replace("[1, 0, 1]", "[1, 0]"));
    write_scaled(&dir, "half-mask", &SCALED_INPUTS.replace("[1, 0, 1]", "[1, 0.5, 1]"));
    write_scaled(
        &dir,
        "no-role",
        &SCALED_INPUTS.replace("[inputs.mask]\nrole = \"constant\"\nvalue = [1, 0, 1]\n", ""),
    );
    copy_bundled("fashion-cnn", &dir);
    std::fs::rename(dir.join("fashion-cnn"), dir.join("typed-image")).unwrap();
    let toml = std::fs::read_to_string(dir.join("typed-image/model.toml")).unwrap();
    std::fs::write(
        dir.join("typed-image/model.toml"),
        format!("{toml}\n[tabular.types]\npixel = \"integer\"\n"),
    )
    .unwrap();
    let expected = [
        (
            "half-mask",
            "inputs.mask.value: input `mask` is int64: 0.5 is not an integer",
        ),
        ("no-role", "inputs.mask: graph input `mask` has no role"),
        ("no-such-input", "inputs.nope: no graph input `nope`"),
        (
            "short-mask",
            "inputs.mask.value: the value has shape [2]; input `mask` takes [3] per row",
        ),
        ("typed-image", "tabular.types: only tabular models have features"),
    ];
    let s = start(test_config(&dir)).await;
    let list = get_json(&s, "/v1/models").await;
    let served: Vec<&str> = list["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(served, ["counts"], "{list}");
    let failed = list["failed"].as_array().unwrap();
    assert_eq!(failed.len(), expected.len(), "{list}");
    for (f, (name, why)) in failed.iter().zip(expected) {
        assert_eq!(f["name"], name);
        assert!(f["error"].as_str().unwrap().contains(why), "expected `{why}` in {f}");
        assert_discloses_nothing(&f.to_string());
    }
    ok_json(post_json(&s, "/v1/models/counts/predict", &json!({"features": X})).await).await;
    s.stop().await.unwrap();
    // With strict_models the first bad folder stops the start, naming the input.
    let config = explaind::config::Config {
        strict_models: true,
        ..test_config(&dir)
    };
    let err = start_error(config).await;
    assert!(
        err.contains("inputs.mask.value") && err.contains("0.5 is not an integer"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_on_a_model_with_side_inputs_share_runs_and_each_gets_its_own_rows() {
    let dir = temp_dir("inputs-batched");
    write_scaled(&dir, "scaled", SCALED_INPUTS);
    let mut config = test_config(&dir);
    config.workers = 8;
    config.queue_capacity = 32;
    // A window long enough that the concurrent requests meet in it on any machine.
    config.batch_wait_us = 50_000;
    let s = start(config).await;
    let http = reqwest::Client::new();
    let rows: Vec<[f32; 3]> = (0..16).map(|i| [i as f32 * 0.1, 1.0 - i as f32 * 0.2, 0.5]).collect();
    let runs_before = s.state.metrics.passes.runs.get();
    let tasks: Vec<_> = rows
        .iter()
        .map(|x| {
            let (http, base, x) = (http.clone(), url(&s, ""), *x);
            tokio::spawn(async move {
                let r = http
                    .post(format!("{base}/v1/models/scaled/predict"))
                    .json(&json!({"features": x}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), StatusCode::OK);
                r.json::<Value>().await.unwrap()
            })
        })
        .collect();
    for (x, task) in rows.iter().zip(tasks) {
        let v = task.await.unwrap();
        // s = sum_i x_i * SCALE * MASK_i * V_i; the logits are [-s, s].
        let s_b: f64 = (0..3).map(|i| f64::from(x[i] * SCALE * MASK[i] as f32 * V[i])).sum();
        assert!(close(&numbers(&v["outputs"]["logits"]), &[-s_b, s_b]), "{x:?}: {v}");
    }
    let runs = s.state.metrics.passes.runs.get() - runs_before;
    assert!(
        runs < rows.len() as u64,
        "{runs} runs for {} requests: none combined",
        rows.len()
    );
    s.stop().await.unwrap();
}

/// `sevens`: int64 ids `[batch, tokens]` of any length, no tokenizer; class `sevens` scores the
/// count of id 7, class `other` its negative.
fn write_sevens(dir: &std::path::Path) {
    let mut g = GraphBuilder::new("sevens", 17);
    let ids = g.input_typed("ids", data_type::INT64, &[-1, -1]);
    let seven = g.constant_i64("seven", &[], &[7]);
    let eq = g.node("Equal", &[&ids, &seven], vec![]);
    let hits = g.node("Cast", &[&eq], vec![("to", Attr::Int(data_type::FLOAT as i64))]);
    let axes = g.constant_i64("axes", &[1], &[1]);
    let count = g.node("ReduceSum", &[&hits, &axes], vec![("keepdims", Attr::Int(1))]);
    let neg = g.node("Neg", &[&count], vec![]);
    g.node("Concat", &[&neg, &count], vec![("axis", Attr::Int(1))]);
    g.rename_last_output("logits");
    g.output("logits", &[-1, 2]);
    let manifest =
        "task = \"text-classification\"\nscores = \"raw\"\nlabels = [\"other\", \"sevens\"]\n[text]\nsequence = true\n\
                    vocab_size = 10\nwindow = 2\nmax_length = 64\n";
    write_model(dir, "sevens", &g.build(), manifest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sequence_of_ids_without_a_tokenizer_is_explained_by_position_and_by_window() {
    let dir = temp_dir("inputs-sequence");
    write_sevens(&dir);
    let s = start(test_config(&dir)).await;
    let text = "7 1 7 3 2 2";
    let v = ok_json(post_json(&s, "/v1/models/sevens/predict", &json!({"text": text})).await).await;
    assert_eq!(numbers(&v["outputs"]["logits"]), vec![-2.0, 2.0], "{v}");
    // KernelSHAP over positions (hidden by id 0): the model is additive, so each 7 gets exactly 1.
    let (status, v) = explain(
        &s,
        "sevens",
        "kernel-shap",
        json!({"text": text, "target": "sevens", "seed": 1, "params": {"text_features": "tokens"}}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let values = attribution_values(&v);
    let want = [1.0, 0.0, 1.0, 0.0, 0.0, 0.0];
    assert!(close(&values, &want), "{values:?}");
    // Over windows of 2 positions (the manifest's `window`): the windows holding a 7 take 1 each,
    // the last none.
    let (status, v) = explain(
        &s,
        "sevens",
        "kernel-shap",
        json!({"text": text, "target": "sevens", "seed": 1, "include": ["words"]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let windows: Vec<(String, f64)> = v["words"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| (w["text"].as_str().unwrap().to_string(), w["value"].as_f64().unwrap()))
        .collect();
    let texts: Vec<&str> = windows.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(texts, ["7 1", "7 3", "2 2"], "{v}");
    assert!(
        close(&windows.iter().map(|w| w.1).collect::<Vec<_>>(), &[1.0, 1.0, 0.0]),
        "{v}"
    );
    // An id outside the vocabulary is refused, naming its position; gradients do not exist.
    let p = problem(
        post_json(&s, "/v1/models/sevens/predict", &json!({"text": "7 12"})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid-input",
    )
    .await;
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .contains("position 1: `12` is not an id below 10"),
        "{p}"
    );
    let p = post_json(&s, "/v1/models/sevens/explain/saliency", &json!({"text": text})).await;
    assert_eq!(p.status(), StatusCode::UNPROCESSABLE_ENTITY);
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bool_uint8_and_int32_inputs_are_fed_as_such() {
    // `flags`: a bool input [batch, 3] (its features categories 0 and 1), weighted by a uint8
    // constant `k` [3] fed whole and shifted by an int32 constant `j` [batch, 1] fed per row:
    // s = sum_i x_i k_i + j, logits [-s, s].
    let mut g = GraphBuilder::new("flags", 17);
    let x = g.input_typed("x", data_type::BOOL, &[-1, 3]);
    let k = g.input_typed("k", data_type::UINT8, &[3]);
    let j = g.input_typed("j", data_type::INT32, &[-1, 1]);
    let to_float = vec![("to", Attr::Int(data_type::FLOAT as i64))];
    let xf = g.node("Cast", &[&x], to_float.clone());
    let kf = g.node("Cast", &[&k], to_float.clone());
    let jf = g.node("Cast", &[&j], to_float);
    let weighted = g.node("Mul", &[&xf, &kf], vec![]);
    let axes = g.constant_i64("axes", &[1], &[1]);
    let sum = g.node("ReduceSum", &[&weighted, &axes], vec![("keepdims", Attr::Int(1))]);
    let s = g.node("Add", &[&sum, &jf], vec![]);
    let neg = g.node("Neg", &[&s], vec![]);
    g.node("Concat", &[&neg, &s], vec![("axis", Attr::Int(1))]);
    g.rename_last_output("logits");
    g.output("logits", &[-1, 2]);
    let dir = temp_dir("inputs-flags");
    let manifest = "task = \"tabular-classification\"\nscores = \"raw\"\nlabels = [\"a\", \"b\"]\ninput = \"x\"\n\
                    [inputs.k]\nrole = \"constant\"\nvalue = [3, 5, 200]\n[inputs.j]\nrole = \"constant\"\nvalue = [-4]\n\
                    [tabular]\nfeatures = [\"p\", \"q\", \"r\"]\nbackground = \"background.csv\"\n";
    write_model(&dir, "flags", &g.build(), manifest);
    std::fs::write(dir.join("flags/background.csv"), "p,q,r\n0,0,0\n1,1,0\n").unwrap();
    let s = start(test_config(&dir)).await;
    let v = ok_json(post_json(&s, "/v1/models/flags/predict", &json!({"features": [1, 0, 1]})).await).await;
    assert_eq!(numbers(&v["outputs"]["logits"]), vec![-199.0, 199.0], "{v}");
    let p = problem(
        post_json(&s, "/v1/models/flags/predict", &json!({"features": [1, 2, 1]})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid-input",
    )
    .await;
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .contains("feature `q`: 2 is not one of its categories"),
        "{p}"
    );
    // Exact SHAP of an additive model over the two background rows: phi_i = k_i (x_i - E[x_i]).
    let (status, v) = explain(
        &s,
        "flags",
        "kernel-shap",
        json!({"features": [1, 0, 1], "target": "b", "params": {"samples": 16}}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert!(
        close(&numbers(&v["details"]["shapley_values"]), &[1.5, -2.5, 200.0]),
        "{v}"
    );
    s.stop().await.unwrap();
}
