//! Uncertainty benchmark. Prints:
//! 1. MC dropout through the service's executor (masks drawn, input replicated, masked model) next
//!    to the same number of plain model rows run raw in one batched pass (goal: ratio at most 1.1);
//! 2. the server-side time of 20 samples on fashion-cnn over HTTP (goal: under 5 ms);
//! 3. mutual information as a detector of fashion-cnn's mistakes on Fashion-MNIST test images: the
//!    mean for right and wrong predictions and the AUROC (beside predictive entropy and 1 - max
//!    softmax). Reads the test set from `EXPLAIND_FASHION_DIR` (default
//!    `/usr/share/datasets/fashion-mnist`, Debian's `dataset-fashion-mnist`; the first
//!    `EXPLAIND_BENCH_IMAGES`, default 2,000), else the 20 committed test images.
//!
//! Run with `cargo bench --bench uncertainty`.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use explaind::explain::Limits;
use explaind::jobs::{PredictTask, UncertaintyTask};
use explaind::runtime::predict::softmax;
use explaind::runtime::sessions::create_session_from_bytes;
use explaind::runtime::{LoadedModel, Tensor};
use explaind::uncertainty::{self, stats, PlanContext, UncertaintyOptions, UncertaintyParams};
use ort::value::Tensor as OrtTensor;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("target").join("bench-uncertainty-models");
    let _ = std::fs::remove_dir_all(&dir);
    common::copy_bundled(&root, &dir, "fashion-cnn", &["model.onnx", "model.toml"]);
    common::write_resnet18(&dir);
    let config = explaind::config::Config {
        // All of a request's samples in one pass, as the raw run has them.
        max_batch: 128,
        ..common::config(&dir)
    };
    let limits = Limits::from_config(&config);
    let (rt, service) = common::serve(config);
    let state = service.state.clone();
    let env = explaind::runtime::library::init(None).unwrap();
    let valid = |model: &Arc<LoadedModel>, samples: usize, p: f32, inputs: usize| {
        let cx = PlanContext {
            gradients: &state.gradients,
            registry: &state.registry,
            limits,
        };
        let options = UncertaintyOptions {
            params: Some(UncertaintyParams {
                samples: Some(samples),
                p: Some(p),
                ..Default::default()
            }),
            seed: Some(1),
            ..Default::default()
        };
        uncertainty::validate(model, options, &cx, inputs).unwrap()
    };

    println!("MC dropout through the executor vs the same rows of the plain model, raw, in one batched pass");
    println!(
        "{:<12} {:>8} {:>12} {:>10} {:>7} {:>15}",
        "model", "samples", "explaind ms", "raw ms", "ratio", "masked raw ms"
    );
    for (name, dims, rounds, counts) in [
        ("fashion-cnn", vec![1usize, 1, 28, 28], 200, vec![20usize, 100]),
        ("resnet-18", vec![1, 3, 224, 224], 5, vec![20]),
    ] {
        let model = state.registry.get(name).unwrap().clone();
        let n: usize = dims.iter().product();
        let x: Vec<f32> = (0..n).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
        let mut raw = create_session_from_bytes(env, &model.bytes).unwrap();
        for samples in counts {
            let task = || UncertaintyTask {
                valid: valid(&model, samples, 0.1, 1),
                input: Tensor::f32(dims.clone(), x.clone()),
                regions: Vec::new(),
            };
            let mut ours = Vec::new();
            let mut plain = Vec::new();
            let mut masked_raw = Vec::new();
            // The masked model alone, raw: how much of the difference is the graph, not the service.
            let plan = valid(&model, samples, 0.1, 1);
            let uncertainty::Plan::McDropout { sites, rates, .. } = &plan.plan else {
                unreachable!()
            };
            let masks = explaind::uncertainty::mc_dropout::masks(sites, rates, samples, 1);
            let mut masked = create_session_from_bytes(env, &state.gradients.masked(&model, sites).unwrap()).unwrap();
            let mut batch = dims.clone();
            batch[0] = samples;
            let rows: Vec<f32> = (0..samples).flat_map(|_| x.iter().copied()).collect();
            // Alternating, after one untimed run of each (the masked model is built on first use).
            for round in 0..=rounds {
                // Validation happens at the HTTP edge, before the job: not timed here.
                let job = task();
                let started = Instant::now();
                rt.block_on(state.executor.submit(job)).unwrap();
                let a = started.elapsed();
                let started = Instant::now();
                let feed = OrtTensor::from_array((batch.clone(), rows.clone())).unwrap();
                drop(raw.run(ort::inputs![model.spec.input.as_str() => feed]).unwrap());
                let b = started.elapsed();
                let started = Instant::now();
                let mut feeds: Vec<(String, ort::session::SessionInputValue<'static>)> = vec![(
                    model.spec.input.clone(),
                    OrtTensor::from_array((batch.clone(), rows.clone())).unwrap().into(),
                )];
                for (k, m) in masks.iter().enumerate() {
                    let values = m.as_f32().unwrap().to_vec();
                    feeds.push((
                        explaind::onnx::dropout::mask_input(k),
                        OrtTensor::from_array((m.shape.clone(), values)).unwrap().into(),
                    ));
                }
                drop(masked.run(feeds).unwrap());
                let c = started.elapsed();
                if round > 0 {
                    ours.push(a);
                    plain.push(b);
                    masked_raw.push(c);
                }
            }
            let (a, b) = (common::median(ours), common::median(plain));
            println!(
                "{name:<12} {samples:>8} {:>12.2} {:>10.2} {:>7.2} {:>15.2}",
                ms(a),
                ms(b),
                a.as_secs_f64() / b.as_secs_f64(),
                ms(common::median(masked_raw))
            );
        }
    }

    // Server-side time over HTTP: the answer's took_ms (request to answer, parsing included).
    let image = std::fs::read(root.join("tests/fixtures/fashion/test_00.png")).unwrap();
    let url = format!(
        "http://{}/v1/models/fashion-cnn/uncertainty?samples=20&seed=1",
        service.addr
    );
    let took: Vec<f64> = rt.block_on(async {
        let client = reqwest::Client::new();
        let mut took = Vec::new();
        for round in 0..101 {
            let v: serde_json::Value = client
                .post(&url)
                .header("content-type", "image/png")
                .body(image.clone())
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if round > 0 {
                took.push(v["took_ms"].as_f64().unwrap());
            }
        }
        took
    });
    let mut sorted = took.clone();
    sorted.sort_by(f64::total_cmp);
    println!(
        "\nfashion-cnn, 20 MC-dropout samples over HTTP (raw PNG body): server-side median {:.2} ms, p90 {:.2} ms (goal: under 5 ms)",
        sorted[sorted.len() / 2],
        sorted[sorted.len() * 9 / 10]
    );

    // Mutual information as a detector of mistakes.
    let (images, labels, source) = fashion_test_set(&root);
    let model = state.registry.get("fashion-cnn").unwrap().clone();
    let side = 28usize;
    let count = labels.len();
    let input = Tensor::f32(vec![count, 1, side, side], images);
    let rows = rt
        .block_on(state.executor.submit(PredictTask {
            model: model.clone(),
            inputs: vec![input.clone()],
            top_k: 10,
        }))
        .unwrap();
    let wrong: Vec<bool> = rows
        .iter()
        .zip(&labels)
        .map(|(r, &l)| r.predictions[0].index != l)
        .collect();
    let msp: Vec<f64> = rows
        .iter()
        .map(|r| 1.0 - softmax(&r.outputs["logits"]).into_iter().fold(0.0, f64::max))
        .collect();
    println!(
        "\nfashion-cnn on {count} test images ({source}): {} wrong; MC dropout at the last linear layer, 20 samples",
        wrong.iter().filter(|w| **w).count()
    );
    println!(
        "{:>5} {:>12} {:>12} {:>10} {:>12} {:>12}",
        "p", "MI right", "MI wrong", "AUROC MI", "AUROC H", "AUROC 1-MSP"
    );
    for p in [0.1f32, 0.3, 0.5] {
        let mut mi = Vec::with_capacity(count);
        let mut entropy = Vec::with_capacity(count);
        for start in (0..count).step_by(50) {
            let end = (start + 50).min(count);
            let task = UncertaintyTask {
                valid: valid(&model, 20, p, end - start),
                input: input.slice_rows(start, end),
                regions: Vec::new(),
            };
            for e in rt.block_on(state.executor.submit(task)).unwrap() {
                mi.push(e.summary.mutual_information.unwrap());
                entropy.push(e.summary.predictive_entropy.unwrap());
            }
        }
        let mean = |v: &[f64], want: bool| {
            let picked: Vec<f64> = v
                .iter()
                .zip(&wrong)
                .filter(|(_, w)| **w == want)
                .map(|(m, _)| *m)
                .collect();
            picked.iter().sum::<f64>() / picked.len().max(1) as f64
        };
        let auc = |v: &[f64]| stats::auroc(v, &wrong).map_or("-".to_string(), |a| format!("{a:.3}"));
        println!(
            "{p:>5} {:>12.4} {:>12.4} {:>10} {:>12} {:>12}",
            mean(&mi, false),
            mean(&mi, true),
            auc(&mi),
            auc(&entropy),
            auc(&msp)
        );
    }
    rt.block_on(service.stop()).unwrap();
}

/// Preprocessed test images (pixel / 255, then the manifest's mean and std) and their labels.
fn fashion_test_set(root: &Path) -> (Vec<f32>, Vec<usize>, String) {
    let dir = std::env::var_os("EXPLAIND_FASHION_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/share/datasets/fashion-mnist"));
    let limit: usize = std::env::var("EXPLAIND_BENCH_IMAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let norm = |p: u8| (p as f32 / 255.0 - 0.286) / 0.353;
    let gunzip = |path: PathBuf| -> Option<Vec<u8>> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(std::fs::File::open(path).ok()?)
            .read_to_end(&mut out)
            .ok()?;
        Some(out)
    };
    if let (Some(images), Some(labels)) = (
        gunzip(dir.join("t10k-images-idx3-ubyte.gz")),
        gunzip(dir.join("t10k-labels-idx1-ubyte.gz")),
    ) {
        // IDX files: 16- and 8-byte headers, then one byte per pixel / label.
        let n = limit.min(labels.len().saturating_sub(8));
        let pixels = images[16..16 + n * 784].iter().map(|&p| norm(p)).collect();
        let labels = labels[8..8 + n].iter().map(|&l| l as usize).collect();
        return (pixels, labels, format!("Fashion-MNIST test set, first {n}"));
    }
    let expected: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("tests/fixtures/fashion/expected.json")).unwrap()).unwrap();
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for case in expected["cases"].as_array().unwrap() {
        let path = root.join("tests/fixtures/fashion").join(case["file"].as_str().unwrap());
        let img = image::open(path).unwrap().to_luma8();
        pixels.extend(img.pixels().map(|p| norm(p.0[0])));
        labels.push(case["label"].as_u64().unwrap() as usize);
    }
    let n = labels.len();
    (pixels, labels, format!("the {n} committed test images"))
}
