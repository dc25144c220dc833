//! Text models end to end: a real server on loopback, real WordPiece tokenizers (the `tokenizers`
//! crate), the zoo's text models cut at their word embedding and run by ONNX Runtime.
//! - `keywords` knows its answer (only positive and negative words count), so every text method
//!   must put the target's words first;
//! - `text-transformer` (two BERT-style layers, seeded) is checked against finite differences on
//!   the embeddings, Integrated Gradients' completeness, and NumPy references of attention rollout
//!   and transformer relevance (scripts/rollout_reference.py, scripts/chefer_reference.py);
//! - bad input and models without an embedding lookup are refused with problem+json.

use crate::common;

use std::path::{Path, PathBuf};

use base64::Engine;
use common::*;
use explaind::onnx::builder::{Attr, GraphBuilder};
use explaind::onnx::proto::data_type;
use reqwest::StatusCode;
use serde_json::{json, Value};

pub(crate) const REVIEW: &str = "The movie was great, but the ending was bad!";

async fn text_service(dir: &Path) -> explaind::Service {
    write_text_models(dir);
    start(test_config(dir)).await
}

/// A word list's values by word.
fn word_values(answer: &Value) -> Vec<(String, f64)> {
    answer["words"]
        .as_array()
        .unwrap_or_else(|| panic!("no words: {answer}"))
        .iter()
        .map(|w| (w["text"].as_str().unwrap().to_string(), w["value"].as_f64().unwrap()))
        .collect()
}

/// `method`'s answer on `model` for REVIEW's class `target`, with its words (seeded).
pub(crate) async fn explain_review(s: &explaind::Service, model: &str, method: &str, target: &str) -> Value {
    let body = json!({"text": REVIEW, "target": target, "include": ["words"], "seed": 3});
    ok_json(post_json(s, &format!("/v1/models/{model}/explain/{method}"), &body).await).await
}

/// The word with the largest value.
pub(crate) fn top_word(answer: &Value) -> String {
    word_values(answer)
        .into_iter()
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap()
        .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_carry_offsets_into_the_original_text() {
    let dir = temp_dir("text-tokens");
    let s = text_service(&dir).await;
    let report = get_json(&s, "/v1/models/keywords").await;
    assert_eq!(report["task"], "text-classification", "{report}");
    assert_eq!(report["text"]["embedding_size"], 4, "{report}");
    assert_eq!(report["text"]["hide_token"]["token"], "[MASK]");
    assert_eq!(report["text"]["baseline_token"]["token"], "[PAD]");
    let p = ok_json(post_json(&s, "/v1/models/keywords/predict", &json!({"text": REVIEW})).await).await;
    // One positive and one negative word: equal logits.
    assert_eq!(
        p["outputs"]["logits"],
        json!([2.0, 2.0]),
        "one of each kind of word: {p}"
    );
    assert_eq!(p["truncated"], false);
    let p = ok_json(
        post_json(
            &s,
            "/v1/models/keywords/predict",
            &json!({"instances": [{"text": "great"}, {"text": "a bad, awful film"}, {"text": "excellent"}]}),
        )
        .await,
    )
    .await;
    let tops: Vec<&str> = p["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["predictions"][0]["label"].as_str().unwrap())
        .collect();
    assert_eq!(
        tops,
        ["positive", "negative", "positive"],
        "texts of other lengths in one request: {p}"
    );

    let text = "Unbelievable café, VERY good!";
    let v = ok_json(
        post_json(
            &s,
            "/v1/models/keywords/explain/occlusion",
            &json!({"text": text, "target": "positive", "include": ["words"]}),
        )
        .await,
    )
    .await;
    let tokens: Vec<(String, usize, usize)> = v["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["text"].as_str().unwrap().to_string(),
                t["start"].as_u64().unwrap() as usize,
                t["end"].as_u64().unwrap() as usize,
            )
        })
        .collect();
    let texts: Vec<&str> = tokens.iter().map(|t| t.0.as_str()).collect();
    assert_eq!(
        texts,
        // BERT's normaliser strips the accent: "cafe" is not in the vocabulary.
        ["[CLS]", "un", "##believ", "##able", "[UNK]", ",", "very", "good", "!", "[SEP]"],
        "{v}"
    );
    let chars: Vec<char> = text.chars().collect();
    assert_eq!(
        (tokens[4].1, tokens[4].2),
        (13, 17),
        "the unknown word still maps back to `café`"
    );
    for (token, start, end) in tokens.iter().filter(|t| !t.0.starts_with('[')) {
        let original: String = chars[*start..*end].iter().collect();
        assert_eq!(
            original.to_lowercase(),
            token.trim_start_matches("##"),
            "offsets are characters of the original"
        );
    }
    let words: Vec<String> = word_values(&v).into_iter().map(|w| w.0).collect();
    assert_eq!(
        words,
        ["Unbelievable", "café", ",", "VERY", "good", "!"],
        "tokens merged into words"
    );
    assert_eq!(top_word(&v), "good");
    assert_eq!(v["truncated"], false);

    // The text drawn: an HTML fragment with every word marked, and a PNG.
    let html = reqwest::Client::new()
        .post(url(&s, "/v1/models/keywords/explain/occlusion"))
        .json(&json!({"text": "<b>good</b> & bad", "target": "positive", "format": "html"}))
        .send()
        .await
        .unwrap();
    assert_eq!(html.headers()["content-type"], "text/html; charset=utf-8");
    let html = html.text().await.unwrap();
    assert!(html.contains("<section class=\"explaind-text\">"), "{html}");
    assert!(
        html.contains(">good</mark>") && html.contains("&lt;") && !html.contains("<b>"),
        "{html}"
    );
    assert!(
        html.contains("rgba(255, 0, 81, 1.000)"),
        "the deciding word in full colour: {html}"
    );
    let png = reqwest::Client::new()
        .post(url(&s, "/v1/models/keywords/explain/saliency"))
        .json(&json!({"text": REVIEW, "format": "png"}))
        .send()
        .await
        .unwrap();
    assert_eq!(png.headers()["content-type"], "image/png");
    let img = image::load_from_memory(&png.bytes().await.unwrap()).unwrap().to_rgb8();
    assert!(
        img.width() >= 700 && img.height() > 40,
        "{}x{}",
        img.width(),
        img.height()
    );
    assert!(
        img.pixels().any(|p| p.0 == [255, 0, 81] || p.0 == [0, 139, 251]),
        "a word in full colour"
    );

    // Longer than max_length (32): cut, and said so.
    let long = "good ".repeat(100);
    let v = ok_json(post_json(&s, "/v1/models/keywords/explain/saliency", &json!({"text": long})).await).await;
    assert_eq!(v["truncated"], true, "{v}");
    assert_eq!(v["tokens"].as_array().unwrap().len(), 32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_text_method_finds_the_words_that_decide() {
    let dir = temp_dir("text-known");
    let s = text_service(&dir).await;
    let report = get_json(&s, "/v1/models/keywords").await;
    let methods: Vec<String> = serde_json::from_value(report["methods"].clone()).unwrap();
    let text_methods = [
        "saliency",
        "gradient-x-input",
        "smoothgrad",
        "integrated-gradients",
        "occlusion",
        "lime",
        "kernel-shap",
    ];
    for m in text_methods {
        assert!(
            methods.contains(&m.to_string()),
            "{m} not listed for a text model: {methods:?}"
        );
    }
    assert!(!methods.contains(&"grad-cam".to_string()), "{methods:?}");
    for method in text_methods {
        for (target, word) in [("positive", "great"), ("negative", "bad")] {
            let v = explain_review(&s, "keywords", method, target).await;
            assert_eq!(top_word(&v), word, "{method} for {target}: {v}");
            let values = attribution_values(&v);
            assert_eq!(values.len(), 13, "one value per token: {v}");
            // Tokens and `attributions.values` agree.
            for (t, value) in v["tokens"].as_array().unwrap().iter().zip(&values) {
                assert_eq!(t["value"].as_f64().unwrap(), *value);
            }
        }
    }
    // Integrated Gradients on a piecewise-linear model: the positive word's share is its logit
    // (2 from "great": its Relu goes from -1 at [PAD] to 2).
    let v = ok_json(
        post_json(
            &s,
            "/v1/models/keywords/explain/integrated-gradients",
            &json!({"text": REVIEW, "target": "positive", "include": ["words"], "params": {"steps": 300}}),
        )
        .await,
    )
    .await;
    let great = word_values(&v).into_iter().find(|w| w.0 == "great").unwrap().1;
    assert!((great - 2.0).abs() < 0.05, "{great}: {v}");
}

/// The cut text transformer, its tokenizer, and the embeddings of `text`.
fn cut_transformer(dir: &Path, text: &str) -> (PathBuf, Vec<f32>, Vec<usize>, Vec<bool>) {
    let model_dir = dir.join("text-transformer");
    let original = explaind::onnx::proto::decode_model(&std::fs::read(model_dir.join("model.onnx")).unwrap()).unwrap();
    let inputs = explaind::onnx::embedding::TextInputs {
        ids: "input_ids".into(),
        mask: Some("attention_mask".into()),
        types: None,
        positions: None,
    };
    let cut = explaind::onnx::embedding::cut(&original, &inputs).unwrap();
    let options = explaind::runtime::text::TextOptions {
        tokenizer: "tokenizer.json".into(),
        sequence: None,
        max_length: 32,
        hide_token: None,
        baseline_token: None,
    };
    let tm = explaind::runtime::text::TextModel::load(&model_dir, &options, cut.table.clone()).unwrap();
    let encoded = tm.encode(text, 1 << 16).unwrap();
    let x = tm.embed(&encoded.tokens);
    let file = dir.join("cut.onnx");
    std::fs::write(&file, prost::Message::encode_to_vec(&cut.model)).unwrap();
    let special = encoded.tokens.iter().map(|t| t.special).collect();
    (file, x.as_f32().unwrap().to_vec(), x.shape, special)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transformer_token_gradients_and_integrated_gradients_are_exact() {
    let dir = temp_dir("text-exact");
    let s = text_service(&dir).await;
    let (file, x, shape, _) = cut_transformer(&dir, REVIEW);
    let cut = explaind::onnx::proto::decode_model(&std::fs::read(&file).unwrap()).unwrap();
    // The service's gradient at the embeddings (built on a probe of 32 tokens, run at 13).
    let v = ok_json(
        post_json(
            &s,
            "/v1/models/text-transformer/explain/saliency",
            &json!({"text": REVIEW, "target": 2, "params": {"abs": false}, "include": ["tensor"]}),
        )
        .await,
    )
    .await;
    assert_eq!(
        v["attributions"]["tensor"]["shape"],
        json!([13, 16]),
        "{}",
        v["attributions"]
    );
    let grad: Vec<f64> = serde_json::from_value(v["attributions"]["tensor"]["values"].clone()).unwrap();
    // Central differences of the target logit through ONNX Runtime on the cut graph.
    let runner = gradcheck::runner();
    let mut session = runner.session(&cut).unwrap();
    let mut logit = |xs: Vec<f32>| -> f64 {
        let (_, y) = gradcheck::run_output(&mut session, &[("embeddings", shape.clone(), xs)], "logits");
        y[2] as f64
    };
    let h = 1e-2f32;
    let mut rng = Rng::new(11);
    let mut worst = 0f64;
    for _ in 0..40 {
        let i = (rng.next_u64() % x.len() as u64) as usize;
        let (mut up, mut down) = (x.clone(), x.clone());
        up[i] += h;
        down[i] -= h;
        let fd = (logit(up) - logit(down)) / (2.0 * h as f64);
        let err = (fd - grad[i]).abs() / (1.0 + fd.abs());
        worst = worst.max(err);
        assert!(
            err < 2e-2,
            "embedding value {i}: finite difference {fd}, explaind {} (seed 11)",
            grad[i]
        );
    }
    println!("token gradients: worst relative error {worst:.2e} over 40 embedding values");

    // Integrated Gradients from the [PAD] baseline ([CLS] and [SEP] kept): complete within 1%.
    for target in 0..3 {
        let v = ok_json(
            post_json(
                &s,
                "/v1/models/text-transformer/explain/integrated-gradients",
                &json!({"text": REVIEW, "target": target, "params": {"steps": 50}}),
            )
            .await,
        )
        .await;
        assert_eq!(
            v["params"]["baseline"], "token",
            "the baseline it used, not the default `black`"
        );
        let total: f64 = attribution_values(&v).iter().sum();
        let delta = v["convergence_delta"].as_f64().unwrap();
        let change = total - delta;
        assert!(
            delta.abs() < 0.01 * change.abs(),
            "target {target}: delta {delta} against f(x) - f(baseline) = {change}"
        );
        println!("integrated gradients, target {target}: delta {delta:.2e} of {change:.3}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attention_methods_on_text_match_numpy_references() {
    let dir = temp_dir("text-attention");
    let s = text_service(&dir).await;
    let report = get_json(&s, "/v1/models/text-transformer").await;
    let maps: Vec<String> = serde_json::from_value(report["gradients"]["attention_maps"].clone()).unwrap();
    assert_eq!(maps.len(), 2, "one per layer: {report}");
    let (file, x, shape, special) = cut_transformer(&dir, REVIEW);
    // explaind reports the [CLS] row over the tokens that are not special.
    let keep: Vec<usize> = (0..special.len()).filter(|&i| !special[i]).collect();
    let explained = |v: &Value| -> Vec<f64> {
        let values = attribution_values(v);
        keep.iter().map(|&i| values[i]).collect()
    };
    let close = |label: &str, ours: &[f64], theirs: &[f64], tol: f64| {
        assert_eq!(ours.len(), theirs.len(), "{label}");
        for (i, (a, b)) in ours.iter().zip(theirs).enumerate() {
            assert!((a - b).abs() < tol, "{label}: token {i}: explaind {a}, reference {b}");
        }
    };
    for (fusion, discard) in [("mean", 0.0), ("max", 0.0), ("min", 0.5)] {
        let v = ok_json(
            post_json(
                &s,
                "/v1/models/text-transformer/explain/attention-rollout",
                &json!({"text": REVIEW, "params": {"head_fusion": fusion, "discard_ratio": discard}}),
            )
            .await,
        )
        .await;
        let theirs = attention_reference(
            "rollout_reference.py",
            &json!({"model": file, "input": x, "shape": shape, "maps": maps, "head_fusion": fusion,
                   "discard_ratio": discard, "skip": 1, "keep": keep}),
        );
        close(&format!("rollout {fusion} {discard}"), &explained(&v), &theirs, 1e-4);
        for (i, t) in v["tokens"].as_array().unwrap().iter().enumerate() {
            if special[i] {
                assert_eq!(t["value"], 0.0, "special tokens are not explained: {t}");
            }
        }
    }
    for target in [0, 2] {
        let v = ok_json(
            post_json(
                &s,
                "/v1/models/text-transformer/explain/transformer-relevance",
                &json!({"text": REVIEW, "target": target}),
            )
            .await,
        )
        .await;
        let theirs = attention_reference(
            "chefer_reference.py",
            &json!({"model": file, "input": x, "shape": shape, "maps": maps, "target": target, "skip": 1,
                   "keep": keep, "eps": 1e-3}),
        );
        close(&format!("relevance target {target}"), &explained(&v), &theirs, 2e-2);
    }
}

/// A text model with no embedding lookup: the sum of the token ids (as floats) decides.
fn ids_only_model() -> explaind::onnx::proto::ModelProto {
    let mut g = GraphBuilder::new("ids_only", 17);
    let ids = g.input_typed("input_ids", data_type::INT64, &[-1, -1]);
    let f = g.node("Cast", &[&ids], vec![("to", Attr::Int(data_type::FLOAT as i64))]);
    let axes = g.constant_i64("axes", &[1], &[1]);
    let sum = g.node("ReduceSum", &[&f, &axes], vec![("keepdims", Attr::Int(1))]);
    let w = g.constant("w", &[1, 2], &[0.01, -0.01]);
    g.node("MatMul", &[&sum, &w], vec![]);
    g.rename_last_output("logits");
    g.output("logits", &[-1, 2]);
    g.build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_text_and_unreadable_models_are_refused() {
    let dir = temp_dir("text-refusals");
    write_text_models(&dir);
    copy_bundled("fashion-cnn", &dir);
    write_model(
        &dir,
        "ids-only",
        &ids_only_model(),
        "task = \"text-classification\"\n[text]\ntokenizer = \"tokenizer.json\"\n",
    );
    std::fs::copy(dir.join("keywords/tokenizer.json"), dir.join("ids-only/tokenizer.json")).unwrap();
    let mut config = test_config(&dir);
    config.max_text_bytes = 1000;
    let s = start(config).await;
    let path = "/v1/models/keywords/explain/saliency";
    let bad = |status, slug: &'static str, says: &'static str, body: Value| {
        let s = &s;
        async move {
            let p = problem(post_json(s, path, &body).await, status, slug).await;
            assert!(p["detail"].as_str().unwrap().contains(says), "{body}: {p}");
        }
    };
    bad(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid-input",
        "empty",
        json!({"text": "  "}),
    )
    .await;
    bad(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload-too-large",
        "max_text_bytes",
        json!({"text": "a".repeat(1001)}),
    )
    .await;
    bad(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid-input",
        "send `text`",
        json!({"features": [1.0]}),
    )
    .await;
    bad(
        StatusCode::BAD_REQUEST,
        "invalid-request",
        "exactly one of",
        json!({"text": "good", "features": [1.0]}),
    )
    .await;
    // A lone surrogate is not UTF-8: the JSON is refused.
    let raw = reqwest::Client::new()
        .post(url(&s, path))
        .header("content-type", "application/json")
        .body(r#"{"text": "good \ud800 film"}"#)
        .send()
        .await
        .unwrap();
    problem(raw, StatusCode::BAD_REQUEST, "malformed-json").await;
    let p = problem(
        post_json(&s, "/v1/models/fashion-cnn/explain/saliency", &json!({"text": "good"})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid-input",
    )
    .await;
    assert!(p["detail"].as_str().unwrap().contains("not a text model"), "{p}");
    // A text starts from its baseline token; `token` is for text only.
    let ig = |model: &str| format!("/v1/models/{model}/explain/integrated-gradients");
    for (model, body, says) in [
        (
            "keywords",
            json!({"text": "good", "params": {"baseline": "blur"}}),
            "baseline token",
        ),
        (
            "fashion-cnn",
            json!({
                "image": base64::engine::general_purpose::STANDARD.encode(fashion_png()),
                "params": {"baseline": "token"}
            }),
            "is for text models",
        ),
    ] {
        let p = problem(
            post_json(&s, &ig(model), &body).await,
            StatusCode::BAD_REQUEST,
            "invalid-request",
        )
        .await;
        assert!(p["detail"].as_str().unwrap().contains(says), "{model}: {p}");
    }
    let p = problem(
        post_json(&s, "/v1/models/keywords/explain/grad-cam", &json!({"text": "good"})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid-input",
    )
    .await;
    assert!(
        p["detail"].as_str().unwrap().contains("does not explain text models"),
        "{p}"
    );
    let p = problem(
        post_json(
            &s,
            "/v1/models/keywords/explain/attention-rollout",
            &json!({"text": "good"}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "unsupported-model",
    )
    .await;
    assert!(p["detail"].as_str().unwrap().contains("Softmax outputs"), "{p}");

    // No embedding lookup: gradient methods refused with the reason, perturbation methods served.
    let report = get_json(&s, "/v1/models/ids-only").await;
    assert!(
        report["text"]["gradients_refused"]
            .as_str()
            .unwrap()
            .contains("no Gather"),
        "{report}"
    );
    let p = problem(
        post_json(
            &s,
            "/v1/models/ids-only/explain/integrated-gradients",
            &json!({"text": "good film"}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "model-not-differentiable",
    )
    .await;
    assert!(p["detail"].as_str().unwrap().contains("no embedding lookup"), "{p}");
    let v = ok_json(
        post_json(
            &s,
            "/v1/models/ids-only/explain/occlusion",
            &json!({"text": "good film", "target": 0, "include": ["words"]}),
        )
        .await,
    )
    .await;
    // Hiding a word puts [MASK] (id 4) in its place: the logit drops by 0.01 x (id - 4).
    let (positive, _) = text_keywords();
    let good = word_values(&v).into_iter().find(|w| w.0 == "good").unwrap().1;
    assert!((good - 0.01 * (positive[0] as f64 - 4.0)).abs() < 1e-4, "{v}");
    assert!(s.state.registry.get("keywords").is_some(), "the service is still up");
}

#[test]
fn manifests_that_do_not_fit_are_refused_naming_the_field() {
    let dir = temp_dir("text-manifests");
    write_text_models(&dir);
    let manifest = dir.join("keywords/model.toml");
    for (text, says) in [
        ("task = \"text-classification\"\n", "text.tokenizer"),
        (
            "task = \"text-classification\"\n[text]\ntokenizer = \"missing.json\"\n",
            "missing.json",
        ),
        (
            "task = \"text-classification\"\n[text]\ntokenizer = \"tokenizer.json\"\nmax_length = 1\n",
            "max_length",
        ),
        (
            "task = \"text-classification\"\n[text]\ntokenizer = \"tokenizer.json\"\ninput_ids = \"ids\"\n",
            "no graph input `ids`",
        ),
        (
            "task = \"text-classification\"\n[text]\ntokenizer = \"tokenizer.json\"\nbaseline_token = \"[NOPE]\"\n",
            "[NOPE]",
        ),
        (
            "task = \"image-classification\"\n[text]\ntokenizer = \"tokenizer.json\"\n",
            "[text]",
        ),
    ] {
        std::fs::write(&manifest, text).unwrap();
        let err = explaind::runtime::registry::load_model(&dir.join("keywords")).unwrap_err();
        assert!(err.to_string().contains(says), "{text}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_explanations_are_measured_and_compared() {
    let dir = temp_dir("text-metrics");
    let s = text_service(&dir).await;
    // Deletion hides tokens (the hide token) in the attribution's order: hiding "great" first
    // takes the positive probability from 0.88 to 0.5 at once (no word left counts), so the area is small;
    // insertion shows it first from the fully hidden text.
    let v = ok_json(
        post_json(
            &s,
            "/v1/models/keywords/explain/occlusion",
            &json!({"text": "a great film", "target": "positive", "evaluate": ["deletion", "insertion"]}),
        )
        .await,
    )
    .await;
    let evaluation = v["evaluation"].as_array().unwrap_or_else(|| panic!("{v}"));
    let curve: Vec<f64> = serde_json::from_value(evaluation[0]["curve"].clone()).unwrap();
    assert!(
        (curve[0] - 0.8808).abs() < 1e-3 && (curve[1] - 0.5).abs() < 1e-6,
        "deletion: {curve:?}"
    );
    let deletion = evaluation[0]["value"].as_f64().unwrap();
    let insertion = evaluation[1]["value"].as_f64().unwrap();
    assert!(deletion < insertion, "deletion {deletion}, insertion {insertion}");
    // The same map through the evaluate endpoint, on the text's own token grid.
    let map = v["attributions"].clone();
    let e = ok_json(
        post_json(
            &s,
            "/v1/models/keywords/evaluate",
            &json!({"text": "a great film", "target": "positive", "attributions": map, "evaluate": ["deletion"]}),
        )
        .await,
    )
    .await;
    assert_eq!(e["evaluation"][0]["value"].as_f64().unwrap(), deletion, "{e}");
    // Methods side by side.
    let r = post_json(
        &s,
        "/v1/models/keywords/compare",
        &json!({"text": REVIEW, "methods": ["occlusion", "integrated-gradients"], "format": "png"}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "image/png");
    let c = ok_json(
        post_json(
            &s,
            "/v1/models/keywords/compare",
            &json!({"text": REVIEW, "methods": ["occlusion", "kernel-shap"], "target": "negative"}),
        )
        .await,
    )
    .await;
    assert!(c.to_string().contains("\"tokens\""), "{c}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bundled_text_model_explains_reviews() {
    // models/movie-reviews (scripts/make_text_model.py): a bag-of-words logistic regression
    // trained on VADER's movie-review snippets, behind an embedding lookup.
    let s = start_bundled().await;
    let text = "A moving story, but the second hour is dull.";
    for (method, target, word) in [
        ("integrated-gradients", "positive", "moving"),
        ("integrated-gradients", "negative", "dull"),
        ("kernel-shap", "negative", "dull"),
    ] {
        let v = ok_json(
            post_json(
                &s,
                &format!("/v1/models/movie-reviews/explain/{method}"),
                &json!({"text": text, "target": target, "include": ["words"], "seed": 1}),
            )
            .await,
        )
        .await;
        assert_eq!(top_word(&v), word, "{method} for {target}: {v}");
        if method == "integrated-gradients" {
            // Linear in the embeddings: Integrated Gradients is exact.
            assert!(v["convergence_delta"].as_f64().unwrap().abs() < 1e-4, "{v}");
        }
    }
}
