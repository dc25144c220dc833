//! PatternNet and PatternAttribution on the bundled Fashion-MNIST CNN with its 1,000-image
//! reference set, through the executor:
//! 1. fitting (goal: at most 1.2x the forward passes over the data it reads): the first
//!    PatternAttribution job (a forward pass scores the input, it fits, builds its backward model,
//!    runs one backward row) minus the first PatternNet job after it (patterns kept: it builds its
//!    backward model, runs one row), against the reference set's rows run raw through a forward
//!    session in batches of `max_batch` (decoding the images excluded there; printed apart); and,
//!    to show what the fitting's own passes cost, its statistics graph run raw over the same rows;
//! 2. PatternNet and PatternAttribution, patterns fitted (goal: at most 1.3x one raw backward
//!    pass): the job (one backward row of the pattern rules, which scores the input on its way)
//!    against one row of the exact backward model run raw.
//!
//! Run with `cargo bench --profile dev --config 'profile.dev.package.explaind.opt-level=2' --bench patterns`.

mod common;

use std::path::PathBuf;
use std::time::Instant;

use explaind::explain::{Limits, Methods, PlanContext};
use explaind::jobs::ExplainTask;
use explaind::onnx::autodiff::{build_backward, prepare_forward, GradientSpec, RuleSet, RuleTable};
use explaind::onnx::patterns::{linear_layers, statistics_graph};
use explaind::runtime::graph_runner::OrtRunner;
use explaind::runtime::sessions::create_session_from_bytes;
use explaind::runtime::shapes::probe_shapes;
use explaind::runtime::Tensor;
use prost::Message;

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("target").join("bench-patterns-models");
    let _ = std::fs::remove_dir_all(&dir);
    common::copy_bundled(&root, &dir, "fashion-cnn", &["model.onnx", "model.toml"]);
    let config = common::config(&dir);
    let max_batch = config.max_batch;
    let limits = Limits::from_config(&config);
    let (rt, service) = common::serve(config);
    let model = service.state.registry.get("fashion-cnn").unwrap().clone();
    let set = service.state.references.get("fashion-cnn").expect("the reference set");
    let methods = Methods::standard();
    let dims = vec![1usize, 1, 28, 28];
    let x: Vec<f32> = (0..784).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
    let job = |method: &str| {
        let cx = PlanContext {
            model: &model,
            limits,
            targets: 1,
            reference: Some(set.clone()),
        };
        let params = methods.get(method).unwrap().plan(serde_json::json!({}), &cx).unwrap();
        let mut job = common::job(&model, Tensor::f32(dims.clone(), x.clone()), &params, limits);
        job.reference = Some(set.clone());
        job
    };
    let submit = |method: &str| {
        let job = job(method);
        let started = Instant::now();
        rt.block_on(service.state.executor.submit(ExplainTask::new(job)))
            .unwrap();
        started.elapsed().as_secs_f64() * 1e3
    };

    // 1. Fitting.
    let fit_and_one = submit("pattern-attribution");
    let build_and_one = submit("pattern-net");
    let fit = fit_and_one - build_and_one;
    let env = explaind::runtime::library::init(None).unwrap();
    let started = Instant::now();
    let data = set.input_batch(&model, 0, set.len(), 1 << 26).unwrap();
    let decode = started.elapsed().as_secs_f64() * 1e3;
    let mut forward = create_session_from_bytes(env, &model.bytes).unwrap();
    let values = data.as_f32().unwrap();
    let row = data.row_len();
    let raw_forward = common::median_of_rounds(5, || {
        let mut start = 0;
        while start < set.len() {
            let end = (start + max_batch).min(set.len());
            common::run_raw(
                &mut forward,
                &[(
                    model.spec.input.as_str(),
                    vec![end - start, 1, 28, 28],
                    &values[start * row..end * row],
                )],
            );
            start = end;
        }
    })
    .as_secs_f64()
        * 1e3;
    let prepared_model = prepare_forward(&explaind::onnx::proto::decode_model(&model.bytes).unwrap()).unwrap();
    let runner = OrtRunner::new(env);
    let shapes = probe_shapes(&runner, &prepared_model, &model.spec.input, &dims).unwrap();
    let layers = linear_layers(
        prepared_model.graph.as_ref().unwrap(),
        &model.spec.input,
        &model.spec.output,
        &shapes,
    )
    .unwrap();
    let stats_model = statistics_graph(&prepared_model, &layers, &shapes).unwrap();
    let mut stats = create_session_from_bytes(env, &stats_model.encode_to_vec()).unwrap();
    let raw_over_rows = |session: &mut ort::session::Session| {
        common::median_of_rounds(5, || {
            let mut start = 0;
            while start < set.len() {
                let end = (start + max_batch).min(set.len());
                common::run_raw(
                    session,
                    &[(
                        model.spec.input.as_str(),
                        vec![end - start, 1, 28, 28],
                        &values[start * row..end * row],
                    )],
                );
                start = end;
            }
        })
        .as_secs_f64()
            * 1e3
    };
    let raw_stats = raw_over_rows(&mut stats);
    let raw_forward_again = raw_over_rows(&mut forward);
    println!(
        "fashion-cnn, {} reference images, max_batch {max_batch}\n\
         fitting: {fit:.1} ms (first pattern-attribution job {fit_and_one:.1} ms - first pattern-net job \
         {build_and_one:.1} ms); raw forward passes over the same rows {raw_forward:.1} ms (decoding them \
         apart: {decode:.1} ms); ratio {:.2}",
        set.len(),
        fit / raw_forward
    );
    println!(
        "the statistics graph run raw over the same rows: {raw_stats:.1} ms, forward again {raw_forward_again:.1} ms: \
         ratio {:.2}",
        raw_stats / raw_forward_again
    );

    // 2. One explanation against one raw backward pass.
    let spec = GradientSpec {
        input: model.spec.input.clone(),
        output: model.spec.output.clone(),
        layers: vec![],
        input_grad: true,
    };
    let bw = build_backward(
        &prepared_model,
        &spec,
        &shapes,
        &RuleTable::for_set(RuleSet::Exact),
        Some(&runner),
    )
    .unwrap();
    let mut backward = create_session_from_bytes(env, &bw.model.encode_to_vec()).unwrap();
    let classes = model.spec.labels.len();
    let rounds = 200;
    let raw = common::median_of_rounds(rounds, || {
        common::run_raw_rows(
            &mut forward,
            &mut [&mut backward],
            &model.spec.input,
            (&dims, &x),
            classes,
            0,
            1,
            max_batch,
        );
    })
    .as_secs_f64()
        * 1e3;
    println!("one raw backward pass (exact rules): {raw:.3} ms");
    println!("{:<22} {:>9} {:>7}", "method", "ms", "ratio");
    for method in ["saliency", "pattern-net", "pattern-attribution"] {
        let job = job(method);
        let t = common::median_of_rounds(rounds, || {
            rt.block_on(service.state.executor.submit(ExplainTask::new(job.clone())))
                .unwrap();
        })
        .as_secs_f64()
            * 1e3;
        println!("{method:<22} {t:>9.3} {:>7.2}", t / raw);
    }
    rt.block_on(service.stop()).unwrap();
}
