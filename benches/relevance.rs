//! Reference- and relevance-based methods against saliency on the same model, through the
//! executor (goal: ratio at most 1.2): DeepLIFT runs the input and its reference as one backward
//! pass of two rows through the rescale rule table, LRP one row through its composite's relevance
//! rules, saliency one row through the exact rules. DeepLiftShap's 10 references for scale; extremal perturbation's time per
//! area and iteration (one row of a backward pass plus the mask's smooth max and its gradient).
//! Run with `cargo bench --bench relevance`.

mod common;

use std::path::PathBuf;
use std::time::Instant;

use explaind::explain::{Limits, Methods, PlanContext};
use explaind::jobs::ExplainTask;
use explaind::runtime::Tensor;

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("target").join("bench-relevance-models");
    let _ = std::fs::remove_dir_all(&dir);
    common::copy_bundled(&root, &dir, "fashion-cnn", &["model.onnx", "model.toml"]);
    common::copy_bundled(
        &root,
        &dir,
        "breast-cancer",
        &["model.onnx", "model.toml", "background.csv"],
    );
    common::write_resnet18(&dir);
    let config = common::config(&dir);
    let limits = Limits::from_config(&config);
    let (rt, service) = common::serve(config);
    let methods = Methods::standard();
    println!("through the executor, median ms (first run, which builds the backward model, excluded)");
    let columns = [
        ("deeplift", serde_json::json!({})),
        ("deeplift-shap", serde_json::json!({})),
        ("lrp", serde_json::json!({"composite": "epsilon"})),
        ("lrp", serde_json::json!({"composite": "epsilon_plus_flat"})),
        ("lrp", serde_json::json!({"composite": "epsilon_gamma_box"})),
        ("lrp", serde_json::json!({"composite": "epsilon_alpha2_beta1"})),
    ];
    println!("ratio to saliency (saliency in ms)");
    println!(
        "{:<14} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "model", "saliency", "deeplift", "dl-shap", "lrp-eps", "lrp-flat", "lrp-gbox", "lrp-a2b1"
    );
    let mut extremal = Vec::new();
    for (name, dims, rounds) in [
        ("breast-cancer", vec![1usize, 30], 200),
        ("fashion-cnn", vec![1, 1, 28, 28], 100),
        ("resnet-18", vec![1, 3, 224, 224], 5),
    ] {
        let model = service.state.registry.get(name).unwrap().clone();
        let n: usize = dims.iter().product();
        let x: Vec<f32> = (0..n).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
        let time = |method: &str, params: &serde_json::Value| {
            let cx = PlanContext {
                model: &model,
                limits,
                targets: 1,
                reference: None,
            };
            let params = methods.get(method).unwrap().plan(params.clone(), &cx).unwrap();
            let mut times = Vec::new();
            for round in 0..=rounds {
                let job = common::job(&model, Tensor::f32(dims.clone(), x.clone()), &params, limits);
                let started = Instant::now();
                rt.block_on(service.state.executor.submit(ExplainTask::new(job)))
                    .unwrap();
                if round > 0 {
                    times.push(started.elapsed());
                }
            }
            common::median(times).as_secs_f64() * 1e3
        };
        let s = time("saliency", &serde_json::json!({}));
        let ratios: Vec<String> = columns
            .iter()
            .map(|(method, params)| format!("{:>9.2}", time(method, params) / s))
            .collect();
        println!("{name:<14} {s:>9.2} {}", ratios.join(" "));
        if dims.len() == 4 {
            // Extremal perturbation: a few iterations of its three areas, per area and iteration.
            let iterations = 4.0;
            let e = time(
                "extremal-perturbation",
                &serde_json::json!({"iterations": iterations as usize}),
            );
            extremal.push((name, e / (3.0 * iterations), e / (3.0 * iterations) / s));
        }
    }
    println!("\nextremal-perturbation (3 areas, 4 iterations): ms per area and iteration, and its ratio to saliency");
    for (name, per, ratio) in extremal {
        println!("{name:<14} {per:>9.2} {ratio:>9.2}");
    }
    rt.block_on(service.stop()).unwrap();
}
