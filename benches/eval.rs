//! Explanation-metric benchmark. Prints:
//! 1. deletion + insertion at 30 steps through the executor next to the same rows run raw through
//!    a bare ONNX Runtime session in batches of `max_batch` (goal: ratio at most 1.1; ResNet-18
//!    under about 1.5 s on 2 cores);
//! 2. deletion and insertion (black and blurred substrates, 30 steps) of every image method's
//!    default explanation of fashion-cnn's top class, averaged over the 20 committed test images:
//!    how the defaults compare, RISE's two estimators included.
//!
//! Run with `cargo bench --bench eval`.

mod common;

use std::path::PathBuf;
use std::time::Instant;

use explaind::eval::{self, MetricRequest};
use explaind::explain::{Inputs, Limits, Methods, PlanContext};
use explaind::jobs::{EvaluateTask, ExplainTask};
use explaind::runtime::sessions::create_session_from_bytes;
use explaind::runtime::Tensor;
use ort::value::Tensor as OrtTensor;

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("target").join("bench-eval-models");
    let _ = std::fs::remove_dir_all(&dir);
    common::copy_bundled(&root, &dir, "fashion-cnn", &["model.onnx", "model.toml"]);
    common::write_resnet18(&dir);
    let config = common::config(&dir);
    let limits = Limits::from_config(&config);
    let max_batch = config.max_batch;
    let (rt, service) = common::serve(config);
    let state = service.state.clone();
    let env = explaind::runtime::library::init(None).unwrap();
    let requests =
        |names: &[&str]| -> Vec<MetricRequest> { names.iter().map(|n| MetricRequest::Name(n.to_string())).collect() };

    println!("deletion + insertion (30 steps) through the executor vs the same rows raw, batches of {max_batch}");
    println!(
        "{:<12} {:>6} {:>12} {:>10} {:>7}",
        "model", "rows", "explaind ms", "raw ms", "ratio"
    );
    for (name, dims, rounds) in [
        ("fashion-cnn", vec![1usize, 1, 28, 28], 30),
        ("resnet-18", vec![1, 3, 224, 224], 3),
    ] {
        let model = state.registry.get(name).unwrap().clone();
        let n: usize = dims.iter().product();
        let x: Vec<f32> = (0..n).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
        let pixels = eval::feature_count(&model);
        let map: Vec<f32> = (0..pixels).map(|i| ((i * 31) % 97) as f32).collect();
        let metrics = eval::plan(&requests(&["deletion", "insertion"]), &model, 1, limits).unwrap();
        let rows: usize = metrics.iter().map(|m| m.rows(pixels)).sum::<usize>() + 1;
        let mut raw = create_session_from_bytes(env, &model.bytes).unwrap();
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for round in 0..=rounds {
            let task = EvaluateTask {
                model: model.clone(),
                input: Tensor::f32(dims.clone(), x.clone()),
                map: map.clone(),
                target: None,
                metrics: metrics.clone(),
                seed: 1,
                text: None,
            };
            let started = Instant::now();
            rt.block_on(state.executor.submit(task)).unwrap();
            let a = started.elapsed();
            let started = Instant::now();
            // The same rows: the input alone, then each curve in batches of max_batch.
            let mut left = vec![1usize];
            for m in &metrics {
                let mut r = m.rows(pixels);
                while r > 0 {
                    left.push(r.min(max_batch));
                    r -= r.min(max_batch);
                }
            }
            for b in left {
                let mut batch = dims.clone();
                batch[0] = b;
                let values: Vec<f32> = (0..b).flat_map(|_| x.iter().copied()).collect();
                let feed = OrtTensor::from_array((batch, values)).unwrap();
                drop(raw.run(ort::inputs![model.spec.input.as_str() => feed]).unwrap());
            }
            let b = started.elapsed();
            if round > 0 {
                ours.push(a);
                theirs.push(b);
            }
        }
        let (a, b) = (common::median(ours), common::median(theirs));
        println!(
            "{name:<12} {rows:>6} {:>12.1} {:>10.1} {:>7.2}",
            a.as_secs_f64() * 1e3,
            b.as_secs_f64() * 1e3,
            a.as_secs_f64() / b.as_secs_f64()
        );
    }

    // Every image method's default explanation of fashion-cnn, measured.
    let model = state.registry.get("fashion-cnn").unwrap().clone();
    let expected: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("tests/fixtures/fashion/expected.json")).unwrap()).unwrap();
    let inputs: Vec<Tensor> = expected["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|case| {
            let img = image::open(root.join("tests/fixtures/fashion").join(case["file"].as_str().unwrap()))
                .unwrap()
                .to_luma8();
            let x = img.pixels().map(|p| (p.0[0] as f32 / 255.0 - 0.286) / 0.353).collect();
            Tensor::f32(vec![1, 1, 28, 28], x)
        })
        .collect();
    let metrics = eval::plan(
        &[
            MetricRequest::Name("deletion".into()),
            MetricRequest::Name("insertion".into()),
            MetricRequest::Options(
                serde_json::from_value(serde_json::json!({"metric": "insertion", "substrate": "black"})).unwrap(),
            ),
        ],
        &model,
        1,
        limits,
    )
    .unwrap();
    println!(
        "\nfashion-cnn, top class of the {} committed test images: mean deletion (black; lower is better), insertion (blurred / black start; higher is better)",
        inputs.len()
    );
    println!(
        "{:<28} {:>9} {:>15} {:>15}",
        "method", "deletion", "insertion blur", "insertion black"
    );
    let methods = Methods::standard();
    let mut runs: Vec<(String, serde_json::Value)> = methods
        .iter()
        .filter(|m| m.capabilities().inputs != Inputs::Tabular)
        .map(|m| (m.name().to_string(), serde_json::json!({})))
        .collect();
    runs.push(("rise".into(), serde_json::json!({"estimator": "paper"})));
    runs.push(("lime".into(), serde_json::json!({"hide": "black"})));
    runs.push(("kernel-shap".into(), serde_json::json!({"hide": "black"})));
    for (name, params) in runs {
        let cx = PlanContext {
            model: &model,
            limits,
            targets: 1,
            reference: None,
        };
        let planned = methods.get(&name).unwrap().plan(params.clone(), &cx).unwrap();
        let mut sums = [0f64; 3];
        for input in &inputs {
            let task = ExplainTask {
                job: common::job(&model, input.clone(), &planned, limits),
                evaluate: metrics.clone(),
            };
            let result = rt.block_on(state.executor.submit(task)).unwrap();
            for (sum, e) in sums.iter_mut().zip(&result.evaluations[0]) {
                *sum += e.value.unwrap_or(f64::NAN);
            }
        }
        let n = inputs.len() as f64;
        let label = match params.as_object().and_then(|o| o.iter().next()) {
            Some((k, v)) => format!("{name} ({k} {})", v.as_str().unwrap_or("")),
            None => name,
        };
        println!(
            "{label:<28} {:>9.4} {:>15.4} {:>15.4}",
            sums[0] / n,
            sums[1] / n,
            sums[2] / n
        );
    }
    rt.block_on(service.stop()).unwrap();
}
