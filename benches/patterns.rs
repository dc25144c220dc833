//! PatternNet and PatternAttribution on the bundled Fashion-MNIST CNN with its 1,000-image
//! reference set, through the executor:
//! 1. fitting (goal: at most 1.2x the forward passes over the data it reads): the first
//!    PatternAttribution job (a forward pass scores the input, it fits, builds its backward model,
//!    runs one backward row) minus the first PatternNet job after it (patterns kept: it builds its
//!    backward model, runs one row), against the reference set's rows run raw through a forward
//!    session in batches of `max_batch` (decoding the images excluded there; printed apart); and,
//!    to show what the fitting's own passes cost, its statistics graph run raw over the same rows,
//!    the statistics model's build and session, and the floor: the products alone (one GEMM per
//!    layer and pass on operands laid out before the clock starts) and the multiply-adds of the
//!    products against the forward pass's;
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
    let started = Instant::now();
    let stats_bytes = statistics_graph(&prepared_model, &layers, &shapes)
        .unwrap()
        .encode_to_vec();
    let stats_built = started.elapsed().as_secs_f64() * 1e3;
    let started = Instant::now();
    let mut stats = create_session_from_bytes(env, &stats_bytes).unwrap();
    let stats_session = started.elapsed().as_secs_f64() * 1e3;
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
    // The floor: the products alone, one GEMM per layer and pass on operands laid out before
    // the clock starts, over the same rows in passes of `max_batch`.
    let (products, raw_gemms) = gemm_floor(env, &layers, &shapes, set.len(), max_batch);
    let raw_forward_third = raw_over_rows(&mut forward);
    let macs = Macs::of(&layers, &shapes);
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
    println!("the statistics model: built in {stats_built:.1} ms, its session in {stats_session:.1} ms");
    println!(
        "multiply-adds per row: forward {} (its linear layers), the products {} ({:.2}x; with the shut \
         regime's a- as before {:.2}x)",
        macs.forward,
        macs.products,
        macs.products as f64 / macs.forward as f64,
        macs.with_shut as f64 / macs.forward as f64,
    );
    println!(
        "the products alone ({products} GEMMs of laid-out operands) over the same rows: {raw_gemms:.1} ms, forward \
         again {raw_forward_third:.1} ms: ratio {:.2}; floor of a fitting pass (forward + products) {:.2}x the \
         forward, against the goal of 1.2x",
        raw_gemms / raw_forward_third,
        1.0 + raw_gemms / raw_forward_third
    );
    println!(
        "fitting / raw forward {:.2} (goal 1.2); statistics graph / raw forward {:.2}; floor {:.2}",
        fit / raw_forward_again,
        raw_stats / raw_forward_again,
        1.0 + raw_gemms / raw_forward_third
    );
    println!("load average: {}", load_average());

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

/// Multiply-adds per row: the forward pass's linear layers, the statistics' products (the
/// columns the pass takes now), and the products with the shut regime's columns as before.
struct Macs {
    forward: u64,
    products: u64,
    with_shut: u64,
}

impl Macs {
    fn of(layers: &[explaind::onnx::patterns::LinearLayer], shapes: &explaind::onnx::autodiff::ShapeMap) -> Self {
        let mut m = Macs {
            forward: 0,
            products: 0,
            with_shut: 0,
        };
        for l in layers {
            let samples = samples_per_row(l, shapes);
            let (fan_in, groups, per_group) = (l.fan_in() as u64, l.groups() as u64, (l.outputs() / l.groups()) as u64);
            m.forward += samples * fan_in * groups * per_group;
            m.products += samples * fan_in * groups * l.columns() as u64;
            let before = if l.relu.is_some() {
                3 * per_group + 1
            } else {
                per_group + 1
            };
            m.with_shut += samples * fan_in * groups * before;
        }
        m
    }
}

/// A layer's samples per input row: a convolution's output positions, a dense layer's leading
/// positions.
fn samples_per_row(l: &explaind::onnx::patterns::LinearLayer, shapes: &explaind::onnx::autodiff::ShapeMap) -> u64 {
    let dims = &shapes.get(&l.output).unwrap().dims;
    let numel: u64 = dims.iter().skip(1).map(|d| d.unwrap() as u64).product();
    numel / l.outputs() as u64
}

/// The products of the statistics pass alone: per layer and group one Gemm
/// `[fan_in, samples] x [columns, samples]^T`, on random operands made before the clock starts,
/// over `rows` rows in passes of `max_batch`; the GEMMs' count and the median ms.
fn gemm_floor(
    env: &ort::environment::Environment,
    layers: &[explaind::onnx::patterns::LinearLayer],
    shapes: &explaind::onnx::autodiff::ShapeMap,
    rows: usize,
    max_batch: usize,
) -> (usize, f64) {
    use explaind::onnx::builder::{Attr, GraphBuilder};
    let mut b = GraphBuilder::new("products", 17);
    let mut operands = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        for g in 0..l.groups() {
            let (a, c) = (format!("a{i}.{g}"), format!("b{i}.{g}"));
            b.input(&a, &[l.fan_in() as i64, -1]);
            b.input(&c, &[l.columns() as i64, -1]);
            let out = b.node("Gemm", &[&a, &c], vec![("transB", Attr::Int(1))]);
            b.output(&out, &[l.fan_in() as i64, l.columns() as i64]);
            operands.push((a, c, l.fan_in(), l.columns(), samples_per_row(l, shapes) as usize));
        }
    }
    let mut session = create_session_from_bytes(env, &b.build().encode_to_vec()).unwrap();
    let value = |i: usize| ((i * 7919) % 1000) as f32 / 500.0 - 1.0;
    let mut passes = Vec::new();
    let mut start = 0;
    while start < rows {
        let n = max_batch.min(rows - start);
        let feeds: Vec<(String, ort::value::Tensor<f32>)> = operands
            .iter()
            .flat_map(|(a, c, fan_in, columns, samples)| {
                let s = samples * n;
                [(a, *fan_in), (c, *columns)].map(|(name, height)| {
                    let values: Vec<f32> = (0..height * s).map(value).collect();
                    (
                        name.clone(),
                        ort::value::Tensor::from_array((vec![height, s], values)).unwrap(),
                    )
                })
            })
            .collect();
        passes.push(feeds);
        start += n;
    }
    let ms = common::median_of_rounds(5, || {
        for feeds in &passes {
            let inputs: Vec<(String, ort::session::SessionInputValue<'_>)> =
                feeds.iter().map(|(n, t)| (n.clone(), t.into())).collect();
            drop(session.run(inputs).unwrap());
        }
    })
    .as_secs_f64()
        * 1e3;
    (operands.len(), ms)
}

/// The load average, as `uptime` prints it (this machine is shared: say how busy it was).
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}
