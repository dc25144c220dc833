//! Cross-request batching on the shared sessions: concurrent passes on one model and graph are
//! combined into fewer ONNX Runtime runs, and every caller gets exactly its own rows back.

use crate::common;

use base64::Engine;
use common::*;
use serde_json::{json, Value};

fn image(i: usize) -> String {
    let png = std::fs::read(root().join(format!("tests/fixtures/fashion/test_{i:02}.png"))).unwrap();
    base64::engine::general_purpose::STANDARD.encode(&png)
}

async fn post(http: &reqwest::Client, s: &explaind::Service, path: &str, body: Value) -> Value {
    let r = http.post(url(s, path)).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

fn numbers(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

fn close(a: &[f64], b: &[f64]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-5 + 1e-4 * y.abs())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_share_runs_and_each_gets_its_own_rows() {
    let mut config = test_config(&root().join("models"));
    config.workers = 8;
    config.queue_capacity = 32;
    // A window long enough that the concurrent requests below meet in it on any machine.
    config.batch_wait_us = 50_000;
    let s = start(config).await;
    let http = reqwest::Client::new();
    let n = 16;
    let inputs: Vec<String> = (0..n).map(|i| image(i % 20)).collect();

    // Alone, one after another: the answers to match.
    let mut alone = Vec::new();
    for b64 in &inputs {
        let p = post(
            &http,
            &s,
            "/v1/models/fashion-cnn/predict",
            json!({"image": b64, "top_k": 10}),
        )
        .await;
        let e = post(
            &http,
            &s,
            "/v1/models/fashion-cnn/explain/saliency",
            json!({"image": b64}),
        )
        .await;
        alone.push((p, e));
    }
    let runs_before = s.state.metrics.passes.runs.get();
    let requests_before = s.state.metrics.passes.requests.get();

    // All at once.
    let tasks: Vec<_> = inputs
        .iter()
        .cloned()
        .map(|b64| {
            let (http, base) = (http.clone(), url(&s, ""));
            tokio::spawn(async move {
                let p: Value = http
                    .post(format!("{base}/v1/models/fashion-cnn/predict"))
                    .json(&json!({"image": b64, "top_k": 10}))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                let e: Value = http
                    .post(format!("{base}/v1/models/fashion-cnn/explain/saliency"))
                    .json(&json!({"image": b64}))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                (p, e)
            })
        })
        .collect();
    for (i, task) in tasks.into_iter().enumerate() {
        let (p, e) = task.await.unwrap();
        let (p0, e0) = &alone[i];
        assert_eq!(p["predictions"][0]["index"], p0["predictions"][0]["index"], "input {i}");
        assert!(
            close(&numbers(&p["outputs"]["logits"]), &numbers(&p0["outputs"]["logits"])),
            "input {i}: scores"
        );
        assert_eq!(e["target"], e0["target"], "input {i}");
        assert!(
            close(
                &numbers(&e["attributions"]["values"]),
                &numbers(&e0["attributions"]["values"])
            ),
            "input {i}: saliency map"
        );
    }
    let runs = s.state.metrics.passes.runs.get() - runs_before;
    let requests = s.state.metrics.passes.requests.get() - requests_before;
    println!("{requests} pass requests in {runs} ONNX Runtime runs");
    assert_eq!(
        requests,
        2 * n as u64,
        "one forward and one one-pass backward per input"
    );
    assert!(runs < requests / 2, "{requests} requests took {runs} runs: not batched");
    let metrics = http
        .get(url(&s, "/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("explaind_model_runs_total"), "{metrics}");
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_batching_off_every_request_runs_alone() {
    let mut config = test_config(&root().join("models"));
    config.workers = 4;
    config.batching = false;
    let s = start(config).await;
    let http = reqwest::Client::new();
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let (http, base, b64) = (http.clone(), url(&s, ""), image(i));
            tokio::spawn(async move {
                let r = http
                    .post(format!("{base}/v1/models/fashion-cnn/predict"))
                    .json(&json!({"image": b64}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(s.state.metrics.passes.runs.get(), s.state.metrics.passes.requests.get());
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_passes_run_on_the_workers_thread_with_the_same_answers() {
    let http = reqwest::Client::new();
    let b64 = image(3);
    let mut answers = Vec::new();
    for inline_pass_bytes in [2 << 20, 0] {
        let mut config = test_config(&root().join("models"));
        config.inline_pass_bytes = inline_pass_bytes;
        let s = start(config).await;
        let passes = &s.state.metrics.passes;
        let (runs_before, inline_before) = (passes.runs.get(), passes.inline.get());
        let mut got = Vec::new();
        for (path, body) in [
            ("predict", json!({"image": b64, "top_k": 10})),
            ("explain/saliency", json!({"image": b64})),
            ("explain/grad-cam", json!({"image": b64})),
        ] {
            got.push(post(&http, &s, &format!("/v1/models/fashion-cnn/{path}"), body).await);
        }
        let (runs, inline) = (passes.runs.get() - runs_before, passes.inline.get() - inline_before);
        if inline_pass_bytes == 0 {
            assert_eq!(passes.inline.get(), 0, "every pass on the pool");
        } else {
            // The 28x28 CNN's one-row passes (a predict, two one-pass explanations) all ran inline.
            assert!(inline >= 3 && inline == runs, "{inline} of {runs} runs inline");
        }
        answers.push(got);
        s.stop().await.unwrap();
    }
    let (on, off) = (&answers[0], &answers[1]);
    assert!(close(
        &numbers(&on[0]["outputs"]["logits"]),
        &numbers(&off[0]["outputs"]["logits"])
    ));
    for i in 1..3 {
        assert_eq!(on[i]["target"], off[i]["target"]);
        assert!(close(
            &numbers(&on[i]["attributions"]["values"]),
            &numbers(&off[i]["attributions"]["values"])
        ));
    }
}
