//! Explanation benchmark: each gradient method run through the service's executor (validation and
//! HTTP excluded), next to the same model rows run raw through ONNX Runtime sessions at the same
//! batch size (forward rows through the forward model, gradient rows through the backward model).
//! Goal: ratio at most 1.15. Run with `cargo bench --bench explain`.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use explaind::config::Config;
use explaind::explain::{Inputs, Limits, Methods, PlanContext, XraiParams};
use explaind::jobs::ExplainTask;
use explaind::onnx::autodiff::{build_backward, prepare_forward, GradientSpec, RuleSet, RuleTable};
use explaind::runtime::graph_runner::OrtRunner;
use explaind::runtime::sessions::create_session_from_bytes;
use explaind::runtime::shapes::probe_shapes;
use explaind::runtime::Tensor;
use prost::Message;

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("target").join("bench-models");
    let _ = std::fs::remove_dir_all(&dir);
    common::copy_bundled(&root, &dir, "fashion-cnn", &["model.onnx", "model.toml"]);
    for tabular in ["breast-cancer-forest", "breast-cancer"] {
        common::copy_bundled(&root, &dir, tabular, &["model.onnx", "model.toml", "background.csv"]);
    }
    common::write_resnet18(&dir);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let config = Config {
        bind: "127.0.0.1:0".into(),
        models_dir: dir.clone(),
        max_batch: 16,
        ..Config::default()
    };
    let max_batch = config.max_batch;
    let service = rt.block_on(explaind::Service::start(config)).expect("service");
    rt.block_on(service.state.executor.wait_ready(Duration::from_secs(60)));
    let env = explaind::runtime::library::init(None).unwrap();
    let runner = OrtRunner::new(env);
    let limits = common::limits(max_batch);
    let methods = Methods::standard();

    println!(
        "explanation benchmark: default workers and thread pool ({} intra-op threads), max_batch {max_batch}; \
         raw = the same rows through bare ONNX Runtime sessions",
        explaind::runtime::library::Threads::default().resolved()
    );
    println!(
        "{:<12} {:<22} {:>6} {:>11} {:>11} {:>7}",
        "model", "method", "rows", "method ms", "raw ms", "ratio"
    );
    let mut over_http = Vec::new();
    for (model_name, dims, rounds) in [
        ("fashion-cnn", vec![1usize, 1, 28, 28], 20),
        ("resnet-18", vec![1, 3, 224, 224], 2),
    ] {
        let model = service.state.registry.get(model_name).unwrap().clone();
        let n: usize = dims.iter().product();
        let x: Vec<f32> = (0..n).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
        let classes = model.spec.labels.len();
        let decoded = explaind::onnx::proto::decode_model(&model.bytes).unwrap();
        let mut forward = create_session_from_bytes(env, &model.bytes).unwrap();
        let prepared = prepare_forward(&decoded).unwrap();
        let shapes = probe_shapes(&runner, &prepared, "input", &dims).unwrap();
        let layer = model
            .gradient_report
            .get()
            .and_then(|r| r.default_cam_layer.clone())
            .unwrap();
        let mut backward_sessions = std::collections::HashMap::new();
        // Example-based methods have their own benchmark (benches/reference.rs).
        let attributing = methods
            .iter()
            .filter(|m| m.capabilities().inputs != Inputs::Tabular && !m.capabilities().examples);
        // EXPLAIND_BENCH_ONLY=lime runs only the methods (or models) whose name contains it (or one
        // of its comma-separated parts).
        let only = std::env::var("EXPLAIND_BENCH_ONLY").unwrap_or_default();
        for method in attributing {
            let name = method.name();
            if !only.split(',').any(|o| name.contains(o) || model_name.contains(o)) {
                continue;
            }
            // The figures: LIME and KernelSHAP at 1,000 samples; the other perturbation
            // methods at their fast presets to keep the run short on two cores.
            let params = match name {
                "lime" | "kernel-shap" => serde_json::json!({"samples": 1000}),
                // Ten permutations of the 50 default segments: about 500 rows, as LIME's 1,000 on two cores.
                "sampled-shapley" => serde_json::json!({"permutations": 10}),
                "rise" | "occlusion" => serde_json::json!({"preset": "fast"}),
                // Its defaults take minutes on ResNet-18 (past the job deadline): two areas (a row
                // each in every pass, their masks made side by side), few steps.
                "extremal-perturbation" => serde_json::json!({"areas": [0.05, 0.1], "iterations": 10}),
                _ => serde_json::json!({}),
            };
            // Attention methods need a transformer: a CNN does not serve them.
            let Ok(params) = try_planned(&model, name, params, limits) else {
                continue;
            };
            let job = common::job(&model, Tensor::f32(dims.clone(), x.clone()), &params, limits);
            let mut result = None;
            let method_time = common::median_of_rounds(rounds, || {
                result = Some(
                    rt.block_on(service.state.executor.submit(ExplainTask::new(job.clone())))
                        .unwrap(),
                );
            });
            let result = result.unwrap();
            // The same rows, raw, through the backward models the method's rule sets build (CAM
            // methods' exact one at the layer).
            let keys: Vec<(RuleSet, Vec<String>)> = params
                .rules()
                .into_iter()
                .map(|rules| {
                    let at_layer = method.capabilities().layer && rules == RuleSet::Exact;
                    (rules, if at_layer { vec![layer.clone()] } else { vec![] })
                })
                .collect();
            for key in &keys {
                backward_sessions.entry(key.clone()).or_insert_with(|| {
                    let spec = GradientSpec {
                        input: "input".into(),
                        output: model.spec.output.clone(),
                        layers: key.1.clone(),
                        // A CAM's graph stops at its layer.
                        input_grad: key.1.is_empty(),
                    };
                    let bw =
                        build_backward(&prepared, &spec, &shapes, &RuleTable::for_set(key.0), Some(&runner)).unwrap();
                    create_session_from_bytes(env, &bw.model.encode_to_vec()).unwrap()
                });
            }
            let mut raw_once = || {
                let mut backward: Vec<&mut ort::session::Session> = backward_sessions
                    .iter_mut()
                    .filter(|(k, _)| keys.contains(k))
                    .map(|(_, s)| s)
                    .collect();
                common::run_raw_rows(
                    &mut forward,
                    &mut backward,
                    "input",
                    (&dims, &x),
                    classes,
                    result.rows - result.gradient_rows,
                    result.gradient_rows,
                    max_batch,
                );
            };
            let raw_time = common::median_of_rounds(rounds, &mut raw_once);
            let (m, r) = (method_time, raw_time);
            println!(
                "{model_name:<12} {:<22} {:>6} {:>11.2} {:>11.2} {:>7.2}",
                method.name(),
                result.rows,
                m.as_secs_f64() * 1e3,
                r.as_secs_f64() * 1e3,
                m.as_secs_f64() / r.as_secs_f64()
            );
            // A single-pass method over HTTP as well, each request next to a raw pass of the
            // graph it needs (issue 37: the server's time at most 1.2x that pass on ResNet-18,
            // 1.15x on the example CNN).
            if result.rows == 1 {
                let image = match model_name {
                    "fashion-cnn" => {
                        use base64::Engine;
                        let png = std::fs::read(root.join("tests/fixtures/fashion/test_00.png")).unwrap();
                        base64::engine::general_purpose::STANDARD.encode(png)
                    }
                    _ => common::png(224),
                };
                let url = format!("http://{}/v1/models/{model_name}/explain/{name}", service.addr);
                over_http.push(http_floor(
                    &rt,
                    &url,
                    &image,
                    rounds * 10,
                    &mut raw_once,
                    model_name,
                    name,
                ));
            }
        }
    }
    println!(
        "\nsingle-pass methods over HTTP (issue 37 items 4 and 5), each request next to a raw pass of \
         its graph; server = the answer's stats.wall_ms (body read to answer built), client = the round trip"
    );
    println!(
        "{:<12} {:<22} {:>10} {:>10} {:>10} {:>8} {:>8}",
        "model", "method", "server ms", "client ms", "raw ms", "server/raw", "client/raw"
    );
    for line in &over_http {
        println!("{line}");
    }
    executor_floor(&rt, &service);
    tree_shap(&rt, &service, env, limits);
    counterfactuals(&rt, &service, env, limits);
    // Superpixel segmentation alone (SLIC, 50 segments), for LIME, KernelSHAP and sampled Shapley;
    // and XRAI's six scales (its default segment counts, each at most a quarter of the pixels).
    for side in [28u32, 224] {
        let bytes: Vec<u8> = (0..side * side * 3)
            .map(|i| (i.wrapping_mul(2654435761u32) >> 24) as u8)
            .collect();
        let started = Instant::now();
        for _ in 0..5 {
            let _ = simple_clustering::slic_from_bytes(50, 10, side, side, None, &bytes).unwrap();
        }
        println!(
            "SLIC segmentation {side}x{side}, 50 segments: {:.2} ms",
            started.elapsed().as_secs_f64() * 1e3 / 5.0
        );
        let scales = XraiParams::default().segments;
        let started = Instant::now();
        for _ in 0..5 {
            for s in &scales {
                let s = (*s).min(side * side / 4);
                let _ = simple_clustering::slic_from_bytes(s, 10, side, side, None, &bytes).unwrap();
            }
        }
        println!(
            "SLIC segmentation {side}x{side}, XRAI's scales {scales:?}: {:.2} ms",
            started.elapsed().as_secs_f64() * 1e3 / 5.0
        );
    }
    rt.block_on(service.stop()).unwrap();
}

/// Medians over `rounds` requests of `url` with `image` (after a warm-up) of the server's time and
/// the round trip, each request followed by `raw` (one raw pass of the same graph), as a table line.
fn http_floor(
    rt: &tokio::runtime::Runtime,
    url: &str,
    image: &str,
    rounds: usize,
    raw: &mut dyn FnMut(),
    model: &str,
    method: &str,
) -> String {
    let client = reqwest::Client::new();
    let body = serde_json::json!({"image": image});
    let request = || async {
        let started = Instant::now();
        let answer: serde_json::Value = client.post(url).json(&body).send().await.unwrap().json().await.unwrap();
        let server = answer["stats"]["wall_ms"].as_f64().unwrap();
        (server, started.elapsed().as_secs_f64() * 1e3)
    };
    rt.block_on(request());
    raw();
    let (mut server, mut client_ms, mut raw_ms) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds.max(1) {
        let (s, c) = rt.block_on(request());
        server.push(s);
        client_ms.push(c);
        let started = Instant::now();
        raw();
        raw_ms.push(started.elapsed().as_secs_f64() * 1e3);
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (s, c, r) = (median(server), median(client_ms), median(raw_ms));
    format!(
        "{model:<12} {method:<22} {s:>10.3} {c:>10.3} {r:>10.3} {:>10.2} {:>10.2}",
        s / r,
        c / r
    )
}

/// A job that does nothing: what the executor alone costs.
struct Nothing;

impl explaind::executor::Task for Nothing {
    type Output = ();
    fn run(
        self,
        _: &mut explaind::runtime::WorkerRuntime,
        _: &explaind::runtime::JobContext,
    ) -> Result<(), explaind::runtime::RuntimeError> {
        Ok(())
    }
}

/// The executor's own cost per job: an empty job submitted and its result awaited (admission,
/// the hop to a worker thread and back), the median of 2,000.
fn executor_floor(rt: &tokio::runtime::Runtime, service: &explaind::Service) {
    let executor = &service.state.executor;
    let took: Vec<Duration> = (0..2001)
        .map(|_| {
            let started = Instant::now();
            rt.block_on(executor.submit(Nothing)).unwrap();
            started.elapsed()
        })
        .skip(1)
        .collect();
    println!(
        "\nan empty job through the executor (admission, the hop to a worker and back): {:.1} us (median of 2,000)",
        common::median(took).as_secs_f64() * 1e6
    );
}

/// The first 20 background rows of a tabular model, and the milliseconds one raw ONNX Runtime
/// prediction of such a row takes (mean over `repeats` passes over them).
fn tabular_rows(
    model: &explaind::runtime::LoadedModel,
    env: &'static ort::environment::Environment,
    repeats: usize,
) -> (Vec<Vec<f32>>, f64) {
    let rows: Vec<Vec<f32>> = model.background.clone().unwrap().into_iter().take(20).collect();
    let mut session = create_session_from_bytes(env, &model.bytes).unwrap();
    let input = model.spec.input.clone();
    let started = Instant::now();
    for _ in 0..repeats {
        for r in &rows {
            common::run_raw(&mut session, &[(input.as_str(), vec![1, r.len()], r)]);
        }
    }
    let raw = started.elapsed().as_secs_f64() * 1e3 / (repeats * rows.len()) as f64;
    (rows, raw)
}

/// Milliseconds per row of `method` with `params` on `model`, run through the executor as a
/// request's job (after one warm-up row).
fn ms_per_row(
    rt: &tokio::runtime::Runtime,
    service: &explaind::Service,
    model: &Arc<explaind::runtime::LoadedModel>,
    params: &explaind::explain::method::ValidParams,
    limits: Limits,
    rows: &[Vec<f32>],
) -> f64 {
    let run = |r: &Vec<f32>| {
        let job = common::job(model, Tensor::f32(vec![1, r.len()], r.clone()), params, limits);
        rt.block_on(service.state.executor.submit(ExplainTask::new(job)))
            .unwrap();
    };
    run(&rows[0]);
    let started = Instant::now();
    for r in rows {
        run(r);
    }
    started.elapsed().as_secs_f64() * 1e3 / rows.len() as f64
}

/// `method` planned with `params` for `model`.
fn planned(
    model: &explaind::runtime::LoadedModel,
    method: &str,
    params: serde_json::Value,
    limits: Limits,
) -> explaind::explain::method::ValidParams {
    try_planned(model, method, params, limits).unwrap()
}

/// [`planned`], or why the model cannot serve the method.
fn try_planned(
    model: &explaind::runtime::LoadedModel,
    method: &str,
    params: serde_json::Value,
    limits: Limits,
) -> Result<explaind::explain::method::ValidParams, String> {
    let cx = PlanContext {
        model,
        limits,
        targets: 1,
        reference: None,
    };
    Methods::standard()
        .get(method)
        .unwrap()
        .plan(params, &cx)
        .map_err(|e| format!("{e:?}"))
}

/// TreeSHAP per row on the bundled 100-tree model, in both games, next to one raw ONNX Runtime
/// prediction of the same row.
fn tree_shap(
    rt: &tokio::runtime::Runtime,
    service: &explaind::Service,
    env: &'static ort::environment::Environment,
    limits: Limits,
) {
    let model = service.state.registry.get("breast-cancer-forest").unwrap().clone();
    let (rows, raw) = tabular_rows(&model, env, 5);
    let trees = model.forest().unwrap().trees.len();
    for game in ["interventional", "tree_path_dependent"] {
        let params = planned(
            &model,
            "tree-shap",
            serde_json::json!({"feature_perturbation": game, "background_rows": 100}),
            limits,
        );
        let per_row = ms_per_row(rt, service, &model, &params, limits, &rows);
        println!(
            "TreeSHAP {game:<20} {trees} trees, 100 background rows: {per_row:.3} ms per row \
             (one raw ORT prediction {raw:.3} ms; ratio {:.1})",
            per_row / raw
        );
    }
}

/// Counterfactuals and anchors per row, at their defaults: tree tweaking on the bundled 100-tree
/// model and the gradient search on the bundled MLP (issue 18's goals: a tree counterfactual under
/// 50 ms server-side, anchors under 2 s on the breast-cancer model), next to one raw ONNX Runtime
/// prediction of the same row.
fn counterfactuals(
    rt: &tokio::runtime::Runtime,
    service: &explaind::Service,
    env: &'static ort::environment::Environment,
    limits: Limits,
) {
    for (method, name) in [
        ("counterfactual", "breast-cancer-forest"),
        ("counterfactual", "breast-cancer"),
        ("anchors", "breast-cancer-forest"),
        ("anchors", "breast-cancer"),
    ] {
        let model = service.state.registry.get(name).unwrap().clone();
        let (rows, raw) = tabular_rows(&model, env, 1);
        let params = planned(&model, method, serde_json::json!({}), limits);
        let search = match params.echo()["search"].as_str() {
            Some(s) => format!("{s} search"),
            None => format!("{} samples", params.echo()["samples"]),
        };
        let per_row = ms_per_row(rt, service, &model, &params, limits, &rows);
        println!(
            "{method} {name:<20} ({search}): {per_row:.2} ms per row \
             (one raw ORT prediction {raw:.3} ms; ratio {:.0})",
            per_row / raw
        );
    }
}
