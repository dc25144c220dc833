//! Reference-set benchmark on Fashion-MNIST's 60,000 training images (Debian's
//! dataset-fashion-mnist, written as PNGs by scripts/make_reference.py):
//! - building the set (decode, preprocess, the model with its embedding as a further output, the
//!   loss gradients) through the executor, next to the same rows run raw through one ONNX Runtime
//!   session at the service's rows per pass on tensors prepared beforehand. Goal: at most 1.1x.
//!   Decoding the images is timed apart too (the build decodes the next step while a step runs).
//! - one query (similar examples, influence) over every row, server-side (`stats.worker_ms`, the
//!   input's forward pass included). Goal: under 50 ms.
//!
//! Run with `cargo bench --bench reference`.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine;
use explaind::config::Config;
use explaind::examples::build::Plan;
use explaind::jobs::reference::BuildReference;
use explaind::runtime::sessions::create_session_from_bytes;
use ort::value::Tensor as OrtTensor;
use serde_json::json;

const ROWS: usize = 60_000;

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("target").join("bench-reference");
    let images = dir.join("ref");
    if !images.join("labels.csv").is_file() {
        let status = Command::new("python3")
            .arg(root.join("scripts/make_reference.py"))
            .arg(&images)
            .args(["--count", &ROWS.to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "needs Debian's dataset-fashion-mnist");
    }
    let models = dir.join("models");
    let _ = std::fs::remove_dir_all(&models);
    std::fs::create_dir_all(models.join("fashion")).unwrap();
    std::fs::copy(
        root.join("models/fashion-cnn/model.onnx"),
        models.join("fashion/model.onnx"),
    )
    .unwrap();
    let toml = std::fs::read_to_string(root.join("models/fashion-cnn/model.toml")).unwrap();
    let toml = toml.split("\n[reference]").next().unwrap();
    std::fs::write(
        models.join("fashion/model.toml"),
        format!(
            "{toml}\n[reference]\nimages = \"{}\"\nlabels = \"{}\"\n",
            images.join("images").display(),
            images.join("labels.csv").display()
        ),
    )
    .unwrap();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let config = Config {
        bind: "127.0.0.1:0".into(),
        models_dir: models.clone(),
        data_dir: dir.join("data"),
        workers: 1,
        ..Config::default()
    };
    let _ = std::fs::remove_dir_all(&config.data_dir);
    let started = Instant::now();
    let service = rt.block_on(explaind::Service::start(config.clone())).expect("service");
    let start_time = started.elapsed();
    let state = service.state.clone();
    let model = state.registry.get("fashion").unwrap().clone();

    // The build again, timed alone, through the executor.
    let spec = model.spec.reference.clone().unwrap();
    let plan = Plan::new(&model, &spec, &state.registry, &state.gradients, &config).unwrap();
    let outputs: Vec<String> = {
        let l = plan.head.linear.clone().unwrap();
        vec![l.input, l.logits]
    };
    let began = Instant::now();
    let batches: Vec<(usize, Vec<f32>)> = (0..ROWS)
        .step_by(256)
        .map(|s| {
            let e = (s + 256).min(ROWS);
            let t = plan.listing.batch(&model, s, e, u64::MAX).unwrap();
            (e - s, t.as_f32().unwrap().to_vec())
        })
        .collect();
    let decode = began.elapsed();
    let began = Instant::now();
    let set = rt
        .block_on(state.executor.admit().unwrap().run_controlled(
            BuildReference(plan),
            explaind::executor::Control {
                deadline: Duration::from_secs(600),
                cancelled: Default::default(),
                progress: Default::default(),
            },
        ))
        .unwrap();
    let build = began.elapsed();
    assert_eq!(set.len(), ROWS);

    // Raw: the prepared model with the same further outputs, one session, the same steps.
    let prepared = state.gradients.with_outputs(&model, &outputs).unwrap();
    let env = explaind::runtime::library::init(None).unwrap();
    let mut session = create_session_from_bytes(env, &prepared).unwrap();
    // At the service's rows per pass (`max_batch`; this model's rows fit the pass budget).
    let per_pass = config.max_batch;
    let began = Instant::now();
    for (rows, data) in &batches {
        for (k, part) in data.chunks(per_pass * 28 * 28).enumerate() {
            let n = (*rows - k * per_pass).min(per_pass);
            let t = OrtTensor::from_array((vec![n, 1, 28, 28], part.to_vec())).unwrap();
            let out = session.run(ort::inputs!["input" => t]).unwrap();
            drop(out);
        }
    }
    let raw = began.elapsed();

    // Queries over every row, server-side.
    let png = std::fs::read(root.join("tests/fixtures/fashion/test_00.png")).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&png);
    let http = reqwest::Client::new();
    let mut figures = Vec::new();
    for (method, params) in [
        ("similar-examples", json!({"metric": "cosine"})),
        ("similar-examples", json!({"metric": "gradient_cosine"})),
        ("influence", json!({})),
    ] {
        let mut worker = Vec::new();
        let mut model_ms = Vec::new();
        for _ in 0..30 {
            let v: serde_json::Value = rt
                .block_on(async {
                    http.post(format!("http://{}/v1/models/fashion/explain/{method}", service.addr))
                        .json(&json!({"image": b64, "params": params}))
                        .send()
                        .await
                        .unwrap()
                        .json()
                        .await
                })
                .unwrap();
            worker.push(Duration::from_secs_f64(v["stats"]["worker_ms"].as_f64().unwrap() / 1e3));
            model_ms.push(Duration::from_secs_f64(v["stats"]["model_ms"].as_f64().unwrap() / 1e3));
        }
        figures.push((method, params, common::median(worker), common::median(model_ms)));
    }

    println!("reference benchmark: fashion-cnn, {ROWS} Fashion-MNIST training images, 1 worker");
    println!("start with the set built: {:.2} s", start_time.as_secs_f64());
    println!(
        "build: {:.2} s; the same rows raw through ONNX Runtime (tensors ready, {per_pass} rows per run): {:.2} s; ratio {:.2} (goal <= 1.1)",
        build.as_secs_f64(),
        raw.as_secs_f64(),
        build.as_secs_f64() / raw.as_secs_f64()
    );
    println!(
        "reading and decoding the {ROWS} PNGs alone, on one thread: {:.2} s (the build spreads it over the cores, beside the passes)",
        decode.as_secs_f64()
    );
    println!(
        "memory: {} bytes held ({} per row)",
        set.bytes(),
        set.bytes() / ROWS as u64
    );
    for (method, params, worker, model_ms) in figures {
        println!(
            "{method} {params}: {:.2} ms on the worker (median of 30), of which {:.2} ms the input's forward pass (goal < 50 ms)",
            worker.as_secs_f64() * 1e3,
            model_ms.as_secs_f64() * 1e3
        );
    }
    rt.block_on(service.stop()).unwrap();
}
