//! Gradient benchmark: one run of the backward model (forward pass + input gradient) divided by one
//! forward run at the same batch size, for the example CNN and a ResNet-18-sized model at 224x224.
//! Frameworks' autograd costs about 2-3x a forward pass; the goal here is at most 3x.
//!
//! Run with `cargo bench --bench gradients` (or `make bench`). `EXPLAIND_BENCH_THREADS` sets the
//! intra-op pool's threads (default 0: one per core, as the service's default).

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use explaind::onnx::autodiff::{build_backward, prepare_forward, GradientSpec, RuleTable, WEIGHTS_INPUT};
use explaind::onnx::proto::ModelProto;
use explaind::runtime::graph_runner::OrtRunner;
use explaind::runtime::sessions::create_session_from_bytes;
use explaind::runtime::shapes::probe_shapes;
use ort::value::Tensor;
use prost::Message;

fn time_runs(session: &mut ort::session::Session, feeds: &[(&str, Vec<usize>, Vec<f32>)], rounds: usize) -> Duration {
    let mut times = Vec::with_capacity(rounds);
    for i in 0..rounds + 2 {
        let values: Vec<(String, ort::session::SessionInputValue<'static>)> = feeds
            .iter()
            .map(|(n, s, v)| {
                (
                    n.to_string(),
                    Tensor::from_array((s.clone(), v.clone())).unwrap().into(),
                )
            })
            .collect();
        let start = Instant::now();
        let out = session.run(values).unwrap();
        drop(out);
        if i >= 2 {
            times.push(start.elapsed()); // the first two runs warm up
        }
    }
    common::median(times)
}

/// The backward model's pass under other session options than the service's (the process's
/// shared intra-op pool, not spinning, no CPU arena): ONNX Runtime's own defaults (a pool of the
/// session's own that spins, the arena: what a plain `InferenceSession` gets), and each of those
/// changes alone; each as a ratio to the service's session.
fn session_variants(
    env: &'static ort::environment::Environment,
    bytes: &[u8],
    feeds: &[(&str, Vec<usize>, Vec<f32>)],
    rounds: usize,
) {
    use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
    type Options = fn(SessionBuilder) -> SessionBuilder;
    let variants: [(&str, Options); 6] = [
        ("service (shared pool, no spin, no arena)", |b| arena(b, false)),
        ("shared pool, arena", |b| arena(b, true)),
        ("own pool, spinning, arena (ORT default)", |b| {
            arena(b.with_independent_thread_pool().unwrap(), true)
        }),
        ("own pool, spinning, no arena", |b| {
            arena(b.with_independent_thread_pool().unwrap(), false)
        }),
        ("own pool, no spin, no arena", |b| {
            arena(
                b.with_independent_thread_pool()
                    .unwrap()
                    .with_intra_op_spinning(false)
                    .unwrap(),
                false,
            )
        }),
        ("one thread (the caller's), no arena", |b| {
            arena(
                b.with_independent_thread_pool().unwrap().with_intra_threads(1).unwrap(),
                false,
            )
        }),
    ];
    fn arena(b: SessionBuilder, on: bool) -> SessionBuilder {
        let cpu = ort::ep::CPU::default().with_arena_allocator(on).build();
        b.with_execution_providers([cpu]).unwrap()
    }
    let mut base = None;
    for (what, options) in variants {
        let builder = ort::session::Session::builder(env)
            .unwrap()
            .with_optimization_level(GraphOptimizationLevel::All)
            .unwrap();
        let mut session = options(builder).commit_from_memory(bytes).unwrap();
        let t = time_runs(&mut session, feeds, rounds).as_secs_f64();
        let base = *base.get_or_insert(t);
        println!("    {what:<42} {:>9.3} ms  {:>5.2}x the service's", t * 1e3, t / base);
    }
}

fn bench(label: &str, model: &ModelProto, input_dims: &[usize], classes: usize, rounds: usize, threads: usize) {
    bench_io(label, model, ("input", "logits"), input_dims, classes, rounds, threads);
}

/// [`bench`] for a model whose input and output have other names.
fn bench_io(
    label: &str,
    model: &ModelProto,
    (input, output): (&str, &str),
    input_dims: &[usize],
    classes: usize,
    rounds: usize,
    threads: usize,
) {
    // EXPLAIND_BENCH_ONLY=mobilenet runs only the models whose label contains it.
    if let Ok(only) = std::env::var("EXPLAIND_BENCH_ONLY") {
        if !label.contains(&only) {
            return;
        }
    }
    let pool = explaind::runtime::library::Threads {
        intra_op: threads,
        spinning: false,
    };
    let env = explaind::runtime::library::init_with(None, pool).expect("ONNX Runtime (run `make onnxruntime`)");
    let runner = OrtRunner::new(env);
    let started = Instant::now();
    let prepared = prepare_forward(model).unwrap();
    let mut probe_dims = input_dims.to_vec();
    probe_dims[0] = 1;
    let shapes = probe_shapes(&runner, &prepared, input, &probe_dims).unwrap();
    let spec = GradientSpec {
        input: input.into(),
        output: output.into(),
        layers: vec![],
        input_grad: true,
    };
    let bw = build_backward(&prepared, &spec, &shapes, &RuleTable::exact(), Some(&runner)).unwrap();
    let build = started.elapsed();
    // The CAM methods' graph: the backward pass to the default CAM layer only.
    let cam_layer = explaind::onnx::autodiff::analysis_layers(&prepared, input, output, &shapes)
        .pop()
        .map(|l| l.name);
    let cam = cam_layer.as_ref().map(|layer| {
        let spec = GradientSpec {
            layers: vec![layer.clone()],
            input_grad: false,
            ..spec.clone()
        };
        build_backward(&prepared, &spec, &shapes, &RuleTable::exact(), Some(&runner)).unwrap()
    });
    // EXPLAIND_BENCH_SAVE=dir writes both models there, for a profiler.
    if let Some(dir) = std::env::var_os("EXPLAIND_BENCH_SAVE").map(PathBuf::from) {
        let stem: String = label.chars().take_while(|c| !c.is_whitespace()).collect();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{stem}.forward.onnx")), model.encode_to_vec()).unwrap();
        std::fs::write(dir.join(format!("{stem}.backward.onnx")), bw.model.encode_to_vec()).unwrap();
    }
    let mut forward = create_session_from_bytes(env, &model.encode_to_vec()).unwrap();
    let mut backward = create_session_from_bytes(env, &bw.model.encode_to_vec()).unwrap();
    let n: usize = input_dims.iter().product();
    let x: Vec<f32> = (0..n).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
    let w: Vec<f32> = (0..input_dims[0] * classes)
        .map(|i| if i % classes == 3 { 1.0 } else { 0.0 })
        .collect();
    let fwd = time_runs(&mut forward, &[(input, input_dims.to_vec(), x.clone())], rounds);
    let feeds = [
        (input, input_dims.to_vec(), x),
        (WEIGHTS_INPUT, vec![input_dims[0], classes], w),
    ];
    let bwd = time_runs(&mut backward, &feeds, rounds);
    let to_layer = cam.map(|cam| {
        let mut session = create_session_from_bytes(env, &cam.model.encode_to_vec()).unwrap();
        time_runs(&mut session, &feeds, rounds)
    });
    let to_layer = match to_layer {
        Some(t) => format!(
            ", to the CAM layer {:>9.3} ms ({:.2}x forward, {:.2}x to the input)",
            t.as_secs_f64() * 1e3,
            t.as_secs_f64() / fwd.as_secs_f64(),
            t.as_secs_f64() / bwd.as_secs_f64()
        ),
        None => String::new(),
    };
    if input_dims[0] == 1 && std::env::var_os("EXPLAIND_BENCH_VARIANTS").is_some() {
        session_variants(env, &bw.model.encode_to_vec(), &feeds, rounds);
    }
    println!(
        "{label:<28} batch {:>2}: forward {:>9.3} ms, forward+backward {:>9.3} ms, ratio {:>5.2}{to_layer}  (build {:.0} ms)",
        input_dims[0],
        fwd.as_secs_f64() * 1e3,
        bwd.as_secs_f64() * 1e3,
        bwd.as_secs_f64() / fwd.as_secs_f64(),
        build.as_secs_f64() * 1e3,
    );
}

fn main() {
    let threads: usize = std::env::var("EXPLAIND_BENCH_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    println!(
        "gradient benchmark: median run time, {} intra-op thread(s); ratio = backward model / forward model",
        explaind::runtime::library::Threads {
            intra_op: threads,
            spinning: false
        }
        .resolved()
    );
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let fashion =
        explaind::onnx::proto::decode_model(&std::fs::read(root.join("models/fashion-cnn/model.onnx")).unwrap())
            .unwrap();
    for batch in [1, 8, 32] {
        bench("fashion-cnn (1x28x28)", &fashion, &[batch, 1, 28, 28], 10, 200, threads);
    }
    // The pretrained photo model, when `make efficientnet` has made it.
    let efficientnet = root.join("models/efficientnet-lite0/model.onnx");
    if let Ok(bytes) = std::fs::read(&efficientnet) {
        let model = explaind::onnx::proto::decode_model(&bytes).unwrap();
        bench(
            "efficientnet-lite0 (3x224x224)",
            &model,
            &[1, 3, 224, 224],
            1000,
            20,
            threads,
        );
    }
    // Real converted models (tests/it/real_models.rs says what each is), when `make test` has fetched
    // them from PyPI into the cache.
    let cache = std::env::var_os("EXPLAIND_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/explaind")));
    // (cache folder, what it is, (input, output), input shape, classes, rounds)
    type RealModel<'a> = (&'a str, &'a str, (&'a str, &'a str), &'a [usize], usize, usize);
    let real: [RealModel; 3] = [
        (
            "open-nsfw",
            "Caffe, 224x224x3 NHWC",
            ("input_0", "4195"),
            &[1, 224, 224, 3],
            2,
            10,
        ),
        (
            "paddle-orientation",
            "paddle2onnx, 3x48x192",
            ("x", "save_infer_model/scale_0.tmp_1"),
            &[1, 3, 48, 192],
            2,
            50,
        ),
        (
            "mtcnn-onet",
            "keras2onnx, 48x48x3 NHWC",
            ("input_3", "softmax_2"),
            &[1, 48, 48, 3],
            2,
            200,
        ),
    ];
    for (name, what, io, dims, classes, rounds) in real {
        let file = cache.as_ref().map(|c| c.join("models").join(name).join("model.onnx"));
        if let Some(bytes) = file.and_then(|f| std::fs::read(f).ok()) {
            let model = explaind::onnx::proto::decode_model(&bytes).unwrap();
            bench_io(&format!("{name} ({what})"), &model, io, dims, classes, rounds, threads);
        }
    }
    let resnet18 = explaind::onnx::zoo::resnet(&[2, 2, 2, 2], &[64, 128, 256, 512], 224, 1000);
    for (batch, rounds) in [(1, 10), (4, 5), (16, 3)] {
        bench(
            "resnet-18 (3x224x224)",
            &resnet18,
            &[batch, 3, 224, 224],
            1000,
            rounds,
            threads,
        );
    }
    // MobileNet-style (depthwise separable, BatchNorm, ReLU6, HardSwish) and ViT-style (16x16
    // patches of a 224x224 image and a class token: one encoder layer over 197 tokens of width 192,
    // 3 heads) models with seeded weights.
    let mobilenet = explaind::onnx::zoo::mobilenet(&[32, 64, 128, 256, 512], 224, 1000);
    let vit = explaind::onnx::zoo::vit(224, 16, (192, 3, 1), 1000);
    for (batch, rounds) in [(1, 20), (16, 5)] {
        bench(
            "mobilenet-style (3x224x224)",
            &mobilenet,
            &[batch, 3, 224, 224],
            1000,
            rounds,
            threads,
        );
        bench(
            "vit-style (3x224x224)",
            &vit,
            &[batch, 3, 224, 224],
            1000,
            rounds,
            threads,
        );
    }
}
