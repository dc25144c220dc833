//! Activation maximisation against its own passes (goal: at most 1.2x its passes per iteration):
//! each iteration is one backward row through explaind's graphs, plus the Fourier image (FFTs),
//! its random view and their hand-written gradients in Rust. The per-iteration figures are the
//! difference between a run of 2N and one of N iterations (the fixed forward rows cancel): wall
//! time per iteration, over the time inside ONNX Runtime per iteration (`passes`), and over the
//! same row run raw (`raw`: the backward graph of the input gradient, forward and backward in one
//! ONNX Runtime session, one row, weighted on class 0; the goal's ratio). Channel attribution's
//! time per path point against saliency's one row, for scale. Run with `cargo bench --bench
//! features`.
//!
//! On a loaded machine wall time measures the scheduler as much as the work (a thread that gets a
//! tenth of a core shows ten times its time), so the same differences are also taken in the
//! process's CPU time (`cpu/it`, every thread: the worker, ONNX Runtime's pool), against the raw
//! row's CPU time (`cpu/raw`): the ratio that load does not move.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use explaind::explain::{Limits, Methods, PlanContext};
use explaind::jobs::ExplainTask;
use explaind::onnx::autodiff::{RuleSet, WEIGHTS_INPUT};
use explaind::runtime::gradients::GradientKey;
use explaind::runtime::sessions::create_session_from_bytes;
use explaind::runtime::Tensor;

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("target").join("bench-features-models");
    let _ = std::fs::remove_dir_all(&dir);
    common::copy_bundled(&root, &dir, "fashion-cnn", &["model.onnx", "model.toml"]);
    common::write_resnet(&dir, "resnet-64", &[1, 1], &[32, 64], 64, 10);
    common::write_resnet18(&dir);
    let config = common::config(&dir);
    let limits = Limits::from_config(&config);
    let (rt, service) = common::serve(config);
    let methods = Methods::standard();
    let env = explaind::runtime::library::init(None).unwrap();
    println!(
        "activation-maximisation (defaults but `iterations`), per iteration: wall ms, ONNX Runtime ms in the job, \
         the same row raw ms, wall / raw (goal <= 1.2), wall / passes; process CPU ms, the raw row's CPU ms, \
         their ratio (load average {})",
        std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim()
    );
    println!(
        "{:<12} {:>10} {:>10} {:>10} {:>9} {:>12} {:>9} {:>9} {:>8} {:>14} {:>12}",
        "model",
        "wall/it",
        "passes/it",
        "raw/it",
        "wall/raw",
        "wall/passes",
        "cpu/it",
        "raw cpu",
        "cpu/raw",
        "saliency (ms)",
        "ch-attr/pt"
    );
    let only = std::env::var("FEATURES_MODELS").ok();
    for (name, dims, n, rounds) in [
        ("fashion-cnn", vec![1usize, 1, 28, 28], 128, 7),
        ("resnet-64", vec![1, 3, 64, 64], 64, 5),
        ("resnet-18", vec![1, 3, 224, 224], 8, 3),
    ] {
        if only.as_deref().is_some_and(|o| !o.split(',').any(|m| m == name)) {
            continue;
        }
        let model = service.state.registry.get(name).unwrap().clone();
        let count: usize = dims.iter().product();
        let x: Vec<f32> = (0..count).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
        // Median wall, model and process CPU time of `rounds` runs (a first run, which builds
        // the backward model, excluded).
        let time = |method: &str, params: serde_json::Value| -> (f64, f64, f64) {
            let cx = PlanContext {
                model: &model,
                limits,
                targets: 1,
                reference: None,
            };
            let params = methods.get(method).unwrap().plan(params, &cx).unwrap();
            let (mut walls, mut models, mut cpus) = (Vec::new(), Vec::new(), Vec::new());
            for round in 0..=rounds {
                let job = common::job(&model, Tensor::f32(dims.clone(), x.clone()), &params, limits);
                let (started, cpu) = (Instant::now(), cpu_time());
                let result = rt
                    .block_on(service.state.executor.submit(ExplainTask::new(job)))
                    .unwrap();
                if round > 0 {
                    walls.push(started.elapsed());
                    cpus.push(cpu_time().saturating_sub(cpu));
                    models.push(result.model_time);
                }
            }
            let ms = |v: Vec<Duration>| common::median(v).as_secs_f64() * 1e3;
            (ms(walls), ms(models), ms(cpus))
        };
        let (short, short_model, short_cpu) = time("activation-maximisation", serde_json::json!({"iterations": n}));
        let (long, long_model, long_cpu) = time("activation-maximisation", serde_json::json!({"iterations": 2 * n}));
        let (wall, passes, cpu) = (
            (long - short) / n as f64,
            (long_model - short_model) / n as f64,
            (long_cpu - short_cpu) / n as f64,
        );
        // The iteration's row raw: the input gradient's backward graph, as the method's cache builds it.
        let key = GradientKey {
            model: model.name.clone(),
            layers: Vec::new(),
            rules: RuleSet::Exact,
            input_grad: true,
        };
        let built = service.state.gradients.build(&model, &key).unwrap();
        let mut backward = create_session_from_bytes(env, &built.bytes).unwrap();
        let classes = explaind::common::detection_targets::width(&model);
        let mut weights = vec![0f32; classes];
        weights[0] = 1.0;
        let raw = common::median_of_rounds(5 * rounds, || {
            common::run_raw(
                &mut backward,
                &[
                    (model.spec.input.as_str(), dims.clone(), &x),
                    (WEIGHTS_INPUT, vec![1, classes], &weights),
                ],
            )
        })
        .as_secs_f64()
            * 1e3;
        let feeds = [
            (model.spec.input.as_str(), dims.clone(), &x[..]),
            (WEIGHTS_INPUT, vec![1, classes], &weights[..]),
        ];
        let runs = 5 * rounds;
        let before = cpu_time();
        for _ in 0..runs {
            common::run_raw(&mut backward, &feeds);
        }
        let raw_cpu = cpu_time().saturating_sub(before).as_secs_f64() * 1e3 / runs as f64;
        let (saliency, _, _) = time("saliency", serde_json::json!({}));
        let steps = 16;
        let (channels, _, _) = time("channel-attribution", serde_json::json!({"steps": steps}));
        println!(
            "{name:<12} {wall:>10.3} {passes:>10.3} {raw:>10.3} {:>9.2} {:>12.2} {cpu:>9.3} {raw_cpu:>9.3} {:>8.2} {saliency:>14.3} {:>12.3}",
            wall / raw,
            wall / passes,
            cpu / raw_cpu,
            channels / steps as f64
        );
    }
    rt.block_on(service.stop()).unwrap();
}

/// The CPU time of every thread of the process so far.
fn cpu_time() -> Duration {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `t` is a valid timespec for the call to write.
    let ok = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut t) } == 0;
    match ok {
        true => Duration::new(t.tv_sec as u64, t.tv_nsec as u32),
        false => Duration::ZERO,
    }
}
