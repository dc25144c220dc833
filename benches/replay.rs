//! Replay cost: the server time of `POST /v1/audit/records/{id}/replay` against the original
//! audited explain request it re-runs (the same model, input, method, parameters and seed), over
//! HTTP on one service, the two interleaved in each round. Goal: replay at most 1.1x the original.
//! Run with `cargo bench --bench replay`.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use explaind::config::AuditMode;
use serde_json::{json, Value};

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("target").join("bench-replay");
    let _ = std::fs::remove_dir_all(&dir);
    let models = dir.join("models");
    common::copy_bundled(&root, &models, "fashion-cnn", &["model.onnx", "model.toml"]);
    common::copy_bundled(
        &root,
        &models,
        "breast-cancer",
        &["model.onnx", "model.toml", "background.csv"],
    );
    common::write_resnet18(&models);
    let mut config = common::config(&models);
    config.data_dir = dir.join("data");
    config.workers = 1;
    config.audit = AuditMode::All;
    config.audit_store_inputs = true;
    config.audit_store_maps = true;
    let (rt, service) = common::serve(config);
    let http = reqwest::Client::new();
    let holdout: Value =
        serde_json::from_slice(&std::fs::read(root.join("tests/fixtures/breast_cancer_holdout.json")).unwrap())
            .unwrap();
    let features = holdout["cases"][0]["features"].clone();
    let post = |path: String, body: Option<&Value>| {
        let started = Instant::now();
        let mut request = http.post(format!("http://{}{path}", service.addr));
        if let Some(b) = body {
            request = request.json(b);
        }
        let r = rt.block_on(request.send()).unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
        let v: Value = rt.block_on(r.json()).unwrap();
        (started.elapsed(), v)
    };
    println!("replay benchmark: the original audited request against its replay, over HTTP, 1 worker, interleaved");
    println!(
        "{:<14} {:<22} {:>14} {:>12} {:>8}",
        "model", "method", "original ms", "replay ms", "ratio"
    );
    let cases: [(&str, &str, Value, usize); 5] = [
        ("fashion-cnn", "saliency", json!({"image": common::png(28)}), 300),
        (
            "fashion-cnn",
            "integrated-gradients",
            json!({"image": common::png(28)}),
            100,
        ),
        (
            "breast-cancer",
            "kernel-shap",
            json!({"features": features, "seed": 7}),
            50,
        ),
        ("resnet-18", "saliency", json!({"image": common::png(224)}), 20),
        ("resnet-18", "grad-cam", json!({"image": common::png(224)}), 20),
    ];
    for (model, method, body, rounds) in cases {
        let (mut original, mut replay) = (Vec::new(), Vec::new());
        for round in 0..rounds + 2 {
            let (took, answer) = post(format!("/v1/models/{model}/explain/{method}"), Some(&body));
            let id = answer["audit_record"]["id"].as_str().unwrap().to_string();
            let (again, outcome) = post(format!("/v1/audit/records/{id}/replay"), None);
            assert_eq!(outcome["equal"], true, "{model}/{method}: {outcome}");
            // The first two rounds build and warm the sessions.
            if round >= 2 {
                original.push(took);
                replay.push(again);
            }
        }
        let (o, r): (Duration, Duration) = (common::median(original), common::median(replay));
        println!(
            "{model:<14} {method:<22} {:>14.3} {:>12.3} {:>7.3}x",
            o.as_secs_f64() * 1e3,
            r.as_secs_f64() * 1e3,
            r.as_secs_f64() / o.as_secs_f64()
        );
    }
    rt.block_on(service.stop()).unwrap();
}
