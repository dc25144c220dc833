//! PatternNet and PatternAttribution: the paper's linear toy (the gradient recovers the filter,
//! PatternNet the signal), both methods against a NumPy implementation of both estimators
//! (scripts/pattern_reference.py) on small Conv and dense networks, PatternAttribution's
//! conservation through linear layers, patterns kept on disk and reused after a restart, fitting
//! as a job (progress, concurrent requests fitting once, patterns read back at start, fitted at
//! start when configured), a `[patterns]` folder of images as the data, and the refusal of a
//! model with no data to fit on (or a folder outside the model's).

use crate::common;

use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

fn manifest(features: usize, labels: &[&str], background: bool) -> String {
    let names: Vec<String> = (0..features).map(|i| format!("\"f{i}\"")).collect();
    let labels: Vec<String> = labels.iter().map(|l| format!("\"{l}\"")).collect();
    let mut m = format!(
        "task = \"tabular-classification\"\nlabels = [{}]\n[tabular]\nfeatures = [{}]\n",
        labels.join(", "),
        names.join(", ")
    );
    if background {
        m += "background = \"background.csv\"\n";
    }
    m
}

fn write_background(dir: &std::path::Path, rows: &[Vec<f32>]) {
    let width = rows[0].len();
    let mut csv = (0..width).map(|i| format!("f{i}")).collect::<Vec<_>>().join(",") + "\n";
    for r in rows {
        csv += &(r.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(",") + "\n");
    }
    std::fs::write(dir.join("background.csv"), csv).unwrap();
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(a, b)| a * b).sum();
    let na: f64 = a.iter().map(|v| v * v).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|v| v * v).sum::<f64>().sqrt();
    dot / (na * nb)
}

async fn explain(s: &explaind::Service, model: &str, method: &str, features: &[f32], target: usize) -> Value {
    explain_with(s, model, method, features, target, json!({})).await
}

async fn explain_with(
    s: &explaind::Service,
    model: &str,
    method: &str,
    features: &[f32],
    target: usize,
    params: Value,
) -> Value {
    ok_json(
        post_json(
            s,
            &format!("/v1/models/{model}/explain/{method}"),
            &json!({"features": features, "target": target, "params": params}),
        )
        .await,
    )
    .await
}

/// Kindermans et al.'s toy: x = s y + d e with s = (1, 0), distractor d = (1, 1), and the filter
/// w = (1, -1) that cancels it. The gradient is w; PatternNet's signal points along s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pattern_net_recovers_the_signal_where_the_gradient_shows_the_filter() {
    let dir = temp_dir("patterns-toy");
    write_model(
        &dir,
        "toy",
        &explaind::onnx::zoo::signal_distractor([1.0, -1.0]),
        &manifest(2, &["signal", "minus"], true),
    );
    let mut rng = Rng::new(38);
    let n = 1000;
    let y: Vec<f64> = (0..n).map(|_| f64::from(rng.normal())).collect();
    let mut e: Vec<f64> = (0..n).map(|_| 2.0 * f64::from(rng.normal())).collect();
    // The paper's assumption, exactly in the sample: the distractor is uncorrelated with the
    // signal (e made orthogonal to y, both centred).
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (my, me) = (mean(&y), mean(&e));
    let y: Vec<f64> = y.iter().map(|v| v - my).collect();
    e.iter_mut().for_each(|v| *v -= me);
    let k = y.iter().zip(&e).map(|(a, b)| a * b).sum::<f64>() / y.iter().map(|a| a * a).sum::<f64>();
    e.iter_mut().zip(&y).for_each(|(e, y)| *e -= k * y);
    let rows: Vec<Vec<f32>> = y.iter().zip(&e).map(|(y, e)| vec![(y + e) as f32, *e as f32]).collect();
    write_background(&dir.join("toy"), &rows);
    let s = start(test_config(&dir)).await;
    // An input carrying signal 1.5 under a large distractor.
    let x = [1.5 + 3.0, 3.0];
    let gradient = attribution_values(&explain_with(&s, "toy", "saliency", &x, 0, json!({"abs": false})).await);
    let signal = explain(&s, "toy", "pattern-net", &x, 0).await;
    let pn = attribution_values(&signal);
    let (s_dir, w_dir) = ([1.0, 0.0], [1.0, -1.0]);
    assert!(cosine(&gradient, &w_dir) >= 0.99, "gradient {gradient:?}");
    assert!(cosine(&pn, &s_dir) >= 0.99, "PatternNet {pn:?}");
    assert!(cosine(&pn, &w_dir).abs() < 0.8, "PatternNet {pn:?} is the filter");
    // The signal's size: a y with y = w^T x = 1.5.
    assert!((pn[0] - 1.5).abs() < 0.1, "{pn:?}");
    assert_eq!(signal["details"]["patterns"]["data"], "background", "{signal}");
    assert_eq!(signal["details"]["patterns"]["fitted_now"], true, "{signal}");
    s.stop().await.unwrap();
}

/// Both methods equal the NumPy implementation of both estimators on a Conv network (ReLU,
/// zero padding, then a Gemm) and a dense one (MatMul with its bias as an Add, ReLU, Gemm), to
/// 1e-4 of the attribution's largest value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_methods_match_a_numpy_implementation_on_conv_and_dense_networks() {
    let dir = temp_dir("patterns-numpy");
    let mut rng = Rng::new(7);
    let cases = [
        (
            "conv",
            explaind::onnx::zoo::pattern_conv(11, true, true),
            36,
            vec!["a", "b"],
            1usize,
        ),
        (
            "dense",
            explaind::onnx::zoo::pattern_dense(12),
            4,
            vec!["a", "b", "c"],
            2,
        ),
    ];
    let mut data = Vec::new();
    for (name, model, features, labels, _) in &cases {
        write_model(&dir, name, model, &manifest(*features, labels, true));
        let rows: Vec<Vec<f32>> = (0..300).map(|_| rng.vec(*features, -1.0, 1.0)).collect();
        write_background(&dir.join(name), &rows);
        data.push(rows);
    }
    let s = start(test_config(&dir)).await;
    for ((name, _, features, _, target), rows) in cases.iter().zip(&data) {
        let x = rng.vec(*features, -1.0, 1.0);
        let spec = json!({
            "model": dir.join(name).join("model.onnx"),
            "kind": name,
            "data": rows,
            "input": x,
            "target": target,
        });
        let reference = pattern_reference(&spec);
        for (method, key) in [
            ("pattern-net", "pattern_net"),
            ("pattern-attribution", "pattern_attribution"),
        ] {
            let got = attribution_values(&explain(&s, name, method, &x, *target).await);
            let want: Vec<f64> = serde_json::from_value(reference[key].clone()).unwrap();
            let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
            assert!(scale > 1e-3, "{name} {method}: a vanishing reference {want:?}");
            let worst = got.iter().zip(&want).map(|(g, w)| (g - w).abs()).fold(0f64, f64::max);
            assert!(
                got.len() == want.len() && worst <= 1e-4 * scale,
                "{name} {method}: off by {worst} (scale {scale})\n got {got:?}\nwant {want:?}"
            );
        }
    }
    s.stop().await.unwrap();
}

fn pattern_reference(spec: &Value) -> Value {
    let file = temp_dir("pattern-spec").join("spec.json");
    std::fs::write(&file, spec.to_string()).unwrap();
    let out = std::process::Command::new(test_venv("python"))
        .arg(root().join("scripts/pattern_reference.py"))
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Patterns make w^T a = 1 per output neuron, so a network of linear layers (a convolution
/// without padding, a Gemm) hands the whole score to the input: the relevance's sum is the score.
/// The patterns are kept on disk: a second request, and a restarted service, fit nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pattern_attribution_conserves_through_linear_layers_and_patterns_survive_a_restart() {
    let dir = temp_dir("patterns-conserve");
    write_model(
        &dir,
        "lin",
        &explaind::onnx::zoo::pattern_conv(5, false, false),
        &manifest(36, &["a", "b"], true),
    );
    let mut rng = Rng::new(3);
    let rows: Vec<Vec<f32>> = (0..200).map(|_| rng.vec(36, -1.0, 1.0)).collect();
    write_background(&dir.join("lin"), &rows);
    let config = test_config(&dir);
    let s = start(config.clone()).await;
    let x = rng.vec(36, -1.0, 1.0);
    let v = explain(&s, "lin", "pattern-attribution", &x, 1).await;
    let d = &v["details"];
    let (sum, score) = (
        d["relevance_sum"].as_f64().unwrap(),
        d["target_score"].as_f64().unwrap(),
    );
    assert!((sum - score).abs() <= 1e-4 * score.abs().max(1.0), "{v}");
    assert!(
        v["convergence_delta"].as_f64().unwrap().abs() <= 1e-4 * score.abs().max(1.0),
        "{v}"
    );
    assert_eq!(d["patterns"]["fitted_now"], true, "{v}");
    assert_eq!(d["patterns"]["layers"], 2, "{v}");
    assert_eq!(d["patterns"]["two_component"], 0, "{v}");
    let again = explain(&s, "lin", "pattern-net", &x, 1).await;
    assert_eq!(again["details"]["patterns"]["fitted_now"], false, "{again}");
    s.stop().await.unwrap();
    let kept: Vec<_> = std::fs::read_dir(config.data_dir.join("patterns")).unwrap().collect();
    assert_eq!(kept.len(), 1, "one pattern file");

    let s = start(config).await;
    let after = explain(&s, "lin", "pattern-attribution", &x, 1).await;
    assert_eq!(after["details"]["patterns"]["fitted_now"], false, "{after}");
    assert_eq!(after["attributions"], v["attributions"]);
    s.stop().await.unwrap();
}

/// A model with no reference set and no background rows has nothing to fit patterns on: both
/// methods are refused with 422 and the reason, and the model's report lists them as unavailable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pattern_methods_without_data_are_refused() {
    let dir = temp_dir("patterns-nodata");
    write_model(
        &dir,
        "bare",
        &explaind::onnx::zoo::pattern_dense(1),
        &manifest(4, &["a", "b", "c"], false),
    );
    common::copy_bundled("breast-cancer-forest", &dir);
    let s = start(test_config(&dir)).await;
    // A tree ensemble has data but no gradients: refused up front, as its PatternNet requests
    // are, rather than a fitting job that cannot fit.
    let path = "/v1/models/breast-cancer-forest/patterns";
    let refused = problem(
        reqwest::get(url(&s, path)).await.unwrap(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "model-not-differentiable",
    )
    .await;
    let p = problem(
        post_json(&s, path, &json!({})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "model-not-differentiable",
    )
    .await;
    assert_eq!(p["detail"], refused["detail"], "{p}");
    for path in ["/v1/models/bare/patterns"] {
        let resp = reqwest::get(url(&s, path)).await.unwrap();
        let p = problem(resp, StatusCode::UNPROCESSABLE_ENTITY, "invalid-input").await;
        assert!(p["detail"].as_str().unwrap().contains("background"), "{p}");
        let p = problem(
            post_json(&s, path, &json!({})).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-input",
        )
        .await;
        assert!(p["detail"].as_str().unwrap().contains("background"), "{p}");
    }
    for method in ["pattern-net", "pattern-attribution"] {
        let p = problem(
            post_json(
                &s,
                &format!("/v1/models/bare/explain/{method}"),
                &json!({"features": [0.1, 0.2, 0.3, 0.4]}),
            )
            .await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-input",
        )
        .await;
        assert!(p["detail"].as_str().unwrap().contains("background"), "{p}");
        let report = get_json(&s, "/v1/models/bare").await;
        assert!(
            unavailable_reason(&report, method).contains("reference set"),
            "{report}"
        );
    }
    s.stop().await.unwrap();
}

/// The bundled CNN without its reference set, fitting its patterns on a `[patterns]` folder of
/// `images` of its reference images.
fn write_cnn_with_pattern_folder(models_dir: &std::path::Path, images: usize) {
    let from = root().join("models/fashion-cnn");
    let to = models_dir.join("fcnn");
    std::fs::create_dir_all(to.join("fit-images")).unwrap();
    std::fs::copy(from.join("model.onnx"), to.join("model.onnx")).unwrap();
    let manifest = std::fs::read_to_string(from.join("model.toml")).unwrap();
    let manifest = manifest.split("[reference]").next().unwrap().to_string() + "[patterns]\nimages = \"fit-images\"\n";
    std::fs::write(to.join("model.toml"), manifest).unwrap();
    let mut names: Vec<_> = std::fs::read_dir(from.join("reference/images"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    for n in names.iter().take(images) {
        std::fs::copy(from.join("reference/images").join(n), to.join("fit-images").join(n)).unwrap();
    }
}

async fn explain_png(s: &explaind::Service, model: &str, method: &str) -> Value {
    let resp = reqwest::Client::new()
        .post(url(s, &format!("/v1/models/{model}/explain/{method}")))
        .header("content-type", "image/png")
        .body(fashion_png())
        .send()
        .await
        .unwrap();
    ok_json(resp).await
}

/// Fitting is a job: `POST /v1/models/{model}/patterns` answers 202, the job's progress counts
/// the folder's rows while it runs, `GET` says `fitting` meanwhile and `kept` after. Two PatternNet
/// requests sent with the job fit nothing more: of the three, exactly one fits, the others wait
/// for it. After a restart the patterns are read back at start: the file can go and the next
/// request still fits nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fitting_is_a_job_concurrent_requests_fit_once_and_a_restart_reads_the_patterns_back() {
    let dir = temp_dir("patterns-job");
    // All 1,000 images: fitting in the graph is quick, and the watcher must see it run.
    write_cnn_with_pattern_folder(&dir, 1000);
    let config = test_config(&dir);
    let s = start(config.clone()).await;
    let state = get_json(&s, "/v1/models/fcnn/patterns").await;
    assert_eq!(
        (state["state"].as_str(), state["data"].as_str(), state["rows"].as_u64()),
        (Some("absent"), Some("images"), Some(1000)),
        "{state}"
    );
    let resp = post_json(&s, "/v1/models/fcnn/patterns", &json!({})).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let location = resp.headers()["location"].to_str().unwrap().to_string();
    let explains = async {
        tokio::join!(
            explain_png(&s, "fcnn", "pattern-net"),
            explain_png(&s, "fcnn", "pattern-net")
        )
    };
    let watch = async {
        let (mut running, mut fitting) = (Vec::new(), false);
        loop {
            let v = get_json(&s, &location).await;
            if v["state"] == "running" {
                running.push(v["progress"].clone());
            }
            fitting |= get_json(&s, "/v1/models/fcnn/patterns").await["state"] == "fitting";
            if !matches!(v["state"].as_str(), Some("queued" | "running")) {
                return (v, running, fitting);
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    };
    let ((one, two), (job, running, fitting)) = tokio::join!(explains, watch);
    assert_eq!(job["state"], "done", "{job}");
    let fit = &job["result"]["patterns"];
    assert_eq!(
        (fit["data"].as_str(), fit["rows"].as_u64()),
        (Some("images"), Some(1000)),
        "{job}"
    );
    // The fit takes tens of milliseconds, so a watcher on a loaded machine may see the job only
    // queued and then done: what it saw while the job ran must be right, and the finished job's
    // progress must hold the plan and the rows it ran (`GET` saying `fitting` while a claim is held
    // is checked without a race in `runtime::patterns`'s unit tests).
    assert!(
        running
            .iter()
            .all(|p| p["planned"] == 1000 && p["done"].as_u64() <= Some(1000)),
        "progress while running: {running:?}"
    );
    let job_fitted = fit["fitted_now"].as_bool().unwrap();
    assert_eq!(
        (job["progress"]["planned"].as_u64(), job["progress"]["done"].as_u64()),
        (Some(1000), Some(if job_fitted { 1000 } else { 0 })),
        "{job}"
    );
    if running.is_empty() && !fitting {
        eprintln!("the watcher saw the fit neither running nor `fitting` (it was quicker than a poll)");
    }
    let fitted: Vec<bool> = [fit, &one["details"]["patterns"], &two["details"]["patterns"]]
        .iter()
        .map(|p| p["fitted_now"].as_bool().unwrap())
        .collect();
    assert_eq!(
        fitted.iter().filter(|f| **f).count(),
        1,
        "one fit among the job and two requests: {fitted:?}"
    );
    assert_eq!(one["attributions"], two["attributions"]);
    let state = get_json(&s, "/v1/models/fcnn/patterns").await;
    assert_eq!(state["state"], "kept", "{state}");
    assert!(state["layers"].as_u64().unwrap() >= 2, "{state}");
    // Kept: a POST answers their state at once, with no job and no fit.
    let again = post_json(&s, "/v1/models/fcnn/patterns", &json!({})).await;
    assert_eq!(again.status(), StatusCode::OK);
    assert_eq!(again.json::<serde_json::Value>().await.unwrap(), state);
    s.stop().await.unwrap();

    let s = start(config.clone()).await;
    // Read back at start: the file is no longer needed.
    std::fs::remove_dir_all(config.data_dir.join("patterns")).unwrap();
    let after = explain_png(&s, "fcnn", "pattern-net").await;
    assert_eq!(after["details"]["patterns"]["fitted_now"], false, "{after}");
    assert_eq!(after["attributions"], one["attributions"]);
    s.stop().await.unwrap();
}

/// With `fit_patterns_at_start` a model's patterns are fitted in the background after start,
/// before any request asks for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patterns_are_fitted_at_start_when_configured() {
    let dir = temp_dir("patterns-start");
    write_model(
        &dir,
        "lin",
        &explaind::onnx::zoo::pattern_conv(5, false, false),
        &manifest(36, &["a", "b"], true),
    );
    let mut rng = Rng::new(5);
    let rows: Vec<Vec<f32>> = (0..100).map(|_| rng.vec(36, -1.0, 1.0)).collect();
    write_background(&dir.join("lin"), &rows);
    let mut config = test_config(&dir);
    config.fit_patterns_at_start = true;
    let s = start(config).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let state = get_json(&s, "/v1/models/lin/patterns").await;
        if state["state"] == "kept" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{state}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let x = rng.vec(36, -1.0, 1.0);
    let v = explain(&s, "lin", "pattern-net", &x, 1).await;
    assert_eq!(v["details"]["patterns"]["fitted_now"], false, "{v}");
    s.stop().await.unwrap();
}

/// A `[patterns]` folder must lie inside the model's folder (a `..` path, or a link pointing out,
/// is refused at load) and serve an image model.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pattern_folder_outside_the_model_folder_is_refused() {
    let dir = temp_dir("patterns-escape");
    write_cnn_with_pattern_folder(&dir, 1);
    let outside = temp_dir("patterns-outside");
    let toml = dir.join("fcnn/model.toml");
    let original = std::fs::read_to_string(&toml).unwrap();
    let cases = [
        (
            "images = \"fit-images\"",
            "images = \"../../patterns-outside\"",
            "leaves the model's folder",
        ),
        (
            "images = \"fit-images\"",
            "images = \"linked\"",
            "leaves the model's folder",
        ),
    ];
    std::os::unix::fs::symlink(&outside, dir.join("fcnn/linked")).unwrap();
    for (from, to, says) in cases {
        std::fs::write(&toml, original.replace(from, to)).unwrap();
        let mut config = test_config(&dir);
        config.strict_models = true;
        let error = start_error(config).await;
        assert!(
            error.contains("patterns.images") && error.contains(says),
            "{to}: {error}"
        );
    }
    write_model(
        &dir,
        "tab",
        &explaind::onnx::zoo::pattern_dense(1),
        &(manifest(4, &["a", "b", "c"], false) + "[patterns]\nimages = \"x\"\n"),
    );
    std::fs::write(&toml, &original).unwrap();
    let mut config = test_config(&dir);
    config.strict_models = true;
    let error = start_error(config).await;
    assert!(error.contains("serves image models"), "{error}");
}

/// The statistics pass, computed inside the ONNX graph, sums what the estimators read for a
/// convolution of any geometry (groups, strides, dilations, asymmetric zero padding, the ReLU
/// reading the output plus a bias) and for a dense layer no ReLU follows: equal to the sums taken
/// sample by sample here.
#[test]
fn the_statistics_pass_sums_patches_of_any_convolution_geometry() {
    // Grouped (a batched MatMul per group) and not (one GEMM).
    for groups in [2, 1] {
        statistics_of_a_convolution(groups);
    }
}

fn statistics_of_a_convolution(groups: usize) {
    use explaind::onnx::autodiff::prepare_forward;
    use explaind::onnx::autodiff::GraphRunner;
    use explaind::onnx::builder::{Attr, GraphBuilder};
    use explaind::onnx::patterns::{linear_layers, statistics_graph};
    use explaind::runtime::graph_runner::OrtRunner;
    use explaind::runtime::shapes::probe_shapes;

    let (n, c, h, w) = (3usize, 4usize, 7usize, 6usize);
    let (m, kh, kw) = (4usize, 3usize, 2usize);
    let (sh, sw, dh, dw) = (2usize, 1usize, 1usize, 2usize);
    let (pt, pl, pb, pr) = (1usize, 0usize, 2usize, 1usize);
    let (oh, ow) = (
        (h + pt + pb - dh * (kh - 1) - 1) / sh + 1,
        (w + pl + pr - dw * (kw - 1) - 1) / sw + 1,
    );
    let cg = c / groups;
    let mg = m / groups;
    let fan_in = cg * kh * kw;
    let value = |i: usize, scale: f32| ((i * 37 + 11) % 23) as f32 / 11.0 * scale - scale;
    let wv: Vec<f32> = (0..m * fan_in).map(|i| value(i, 0.5)).collect();
    let bv: Vec<f32> = (0..m).map(|i| value(i + 5, 0.3)).collect();
    let out_features = m * oh * ow;
    let vv: Vec<f32> = (0..out_features * 2).map(|i| value(i + 3, 0.2)).collect();

    let mut b = GraphBuilder::new("geometry", 17);
    b.input("x", &[-1, c as i64, h as i64, w as i64]);
    let wt = b.constant("w", &[m as i64, cg as i64, kh as i64, kw as i64], &wv);
    let y = b.node(
        "Conv",
        &["x", &wt],
        vec![
            ("kernel_shape", Attr::Ints(vec![kh as i64, kw as i64])),
            ("strides", Attr::Ints(vec![sh as i64, sw as i64])),
            ("dilations", Attr::Ints(vec![dh as i64, dw as i64])),
            ("pads", Attr::Ints(vec![pt as i64, pl as i64, pb as i64, pr as i64])),
            ("group", Attr::Int(groups as i64)),
        ],
    );
    let bias = b.constant("b", &[1, m as i64, 1, 1], &bv);
    let gate = b.node("Add", &[&y, &bias], vec![]);
    let r = b.node("Relu", &[&gate], vec![]);
    let flat = b.node("Flatten", &[&r], vec![]);
    let v = b.constant("v", &[out_features as i64, 2], &vv);
    let scores = b.node("MatMul", &[&flat, &v], vec![]);
    b.output(&scores, &[-1, 2]);
    let model = prepare_forward(&b.build()).unwrap();
    let env = explaind::runtime::library::init(None).unwrap();
    let runner = OrtRunner::new(env);
    let shapes = probe_shapes(&runner, &model, "x", &[1, c, h, w]).unwrap();
    let layers = linear_layers(model.graph.as_ref().unwrap(), "x", &scores, &shapes).unwrap();
    assert_eq!(layers.len(), 2);
    assert_eq!(layers[0].gate.as_deref(), Some(gate.as_str()));
    assert_eq!(layers[0].relu.as_deref(), Some(r.as_str()));
    let stats = statistics_graph(&model, &layers, &shapes).unwrap();
    let x: Vec<f32> = (0..n * c * h * w).map(|i| value(i + 7, 1.0)).collect();
    let outs = runner.run_f32(&stats, &[("x", vec![n, c, h, w], x.clone())]).unwrap();
    assert_eq!(outs.len(), 4);

    // The convolution, sample by sample: columns per group are (mask, ReLU output) per neuron (the
    // two-component estimator's open regime: no column of ones, the mask's counts).
    let columns = 2 * mg;
    let mut products = vec![0f64; groups * fan_in * columns];
    let mut sums = vec![0f64; groups * columns];
    let mut relu = vec![0f64; n * out_features];
    for ni in 0..n {
        for gi in 0..groups {
            for oy in 0..oh {
                for ox in 0..ow {
                    let patch: Vec<f64> = (0..fan_in)
                        .map(|k| {
                            let (ch, ky, kx) = (gi * cg + k / (kh * kw), (k / kw) % kh, k % kw);
                            let iy = (oy * sh + ky * dh) as isize - pt as isize;
                            let ix = (ox * sw + kx * dw) as isize - pl as isize;
                            if iy < 0 || ix < 0 || iy as usize >= h || ix as usize >= w {
                                return 0.0;
                            }
                            f64::from(x[((ni * c + ch) * h + iy as usize) * w + ix as usize])
                        })
                        .collect();
                    for mj in 0..mg {
                        let j = gi * mg + mj;
                        let yv: f64 = (0..fan_in).map(|k| patch[k] * f64::from(wv[j * fan_in + k])).sum();
                        let gv = yv + f64::from(bv[j]);
                        relu[ni * out_features + (j * oh + oy) * ow + ox] = gv.max(0.0);
                        let open = if gv > 0.0 { 1.0 } else { 0.0 };
                        for (block, rhs) in [open, gv * open].into_iter().enumerate() {
                            let col = block * mg + mj;
                            sums[gi * columns + col] += rhs;
                            for (k, p) in patch.iter().enumerate() {
                                products[(gi * fan_in + k) * columns + col] += p * rhs;
                            }
                        }
                    }
                }
            }
        }
    }
    let close = |got: &[f32], want: &[f64], what: &str| {
        let scale = want.iter().fold(1e-6f64, |a, v| a.max(v.abs()));
        assert_eq!(got.len(), want.len(), "{what}");
        for (i, (g, e)) in got.iter().zip(want).enumerate() {
            assert!((f64::from(*g) - e).abs() <= 1e-4 * scale, "{what}[{i}]: {g} vs {e}");
        }
    };
    assert_eq!(outs[0].0, vec![1, groups, fan_in, columns]);
    close(&outs[0].1, &products, "convolution products");
    close(&outs[1].1, &sums, "convolution sums");

    // The dense layer (no ReLU after it): per input the sums of x y per score and of x; the sums
    // of y and the samples.
    let mut products = vec![0f64; out_features * 3];
    let mut sums = vec![0f64; 3];
    for ni in 0..n {
        let row = &relu[ni * out_features..(ni + 1) * out_features];
        let yv: Vec<f64> = (0..2)
            .map(|j| (0..out_features).map(|k| row[k] * f64::from(vv[k * 2 + j])).sum())
            .collect();
        for (k, xk) in row.iter().enumerate() {
            products[k * 3] += xk * yv[0];
            products[k * 3 + 1] += xk * yv[1];
            products[k * 3 + 2] += xk;
        }
        sums[0] += yv[0];
        sums[1] += yv[1];
        sums[2] += 1.0;
    }
    assert_eq!(outs[2].0, vec![1, 1, out_features, 3]);
    close(&outs[2].1, &products, "dense products");
    close(&outs[3].1, &sums, "dense sums");
}

/// With the patterns kept, the top class of a fresh input takes one pass: the pattern rules'
/// backward model scores the input and chooses the class on its way (no forward pass first), and
/// answers what a request naming that class gets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_kept_patterns_the_top_class_takes_one_pass() {
    let dir = temp_dir("patterns-one-pass");
    write_model(
        &dir,
        "mlp",
        &explaind::onnx::zoo::pattern_dense(4),
        &manifest(4, &["a", "b", "c"], true),
    );
    let mut rng = Rng::new(9);
    let rows: Vec<Vec<f32>> = (0..100).map(|_| rng.vec(4, -1.0, 1.0)).collect();
    write_background(&dir.join("mlp"), &rows);
    let s = start(test_config(&dir)).await;
    let x = rng.vec(4, -1.0, 1.0);
    // The first request fits.
    let first = explain(&s, "mlp", "pattern-net", &x, 0).await;
    assert_eq!(first["details"]["patterns"]["fitted_now"], true, "{first}");
    for method in ["pattern-net", "pattern-attribution"] {
        let top =
            ok_json(post_json(&s, &format!("/v1/models/mlp/explain/{method}"), &json!({"features": x})).await).await;
        let cost = &top["details"]["cost"];
        assert_eq!(
            (cost["forward_rows"].as_u64(), cost["passes"].as_u64()),
            (Some(0), Some(1)),
            "{top}"
        );
        assert_eq!(cost["backward_rows"], json!({"pattern": 1}), "{top}");
        let index = top["target"]["index"].as_u64().unwrap() as usize;
        let named = explain(&s, "mlp", method, &x, index).await;
        assert_eq!(top["attributions"], named["attributions"], "{method}");
        assert_eq!(top["details"]["patterns"]["fitted_now"], false, "{top}");
    }
    s.stop().await.unwrap();
}

/// A `[patterns]` folder is hashed once, not on every request: an image rewritten while the
/// service runs changes nothing until the next start, which hashes the folder again and fits anew.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pattern_folder_is_hashed_once_per_start() {
    let dir = temp_dir("patterns-hash-once");
    write_cnn_with_pattern_folder(&dir, 20);
    let config = test_config(&dir);
    let s = start(config.clone()).await;
    let first = explain_png(&s, "fcnn", "pattern-net").await;
    assert_eq!(first["details"]["patterns"]["fitted_now"], true, "{first}");
    // Another image's bytes under the first image's name.
    let images = dir.join("fcnn/fit-images");
    let mut names: Vec<_> = std::fs::read_dir(&images).unwrap().map(|e| e.unwrap().path()).collect();
    names.sort();
    std::fs::copy(&names[1], &names[0]).unwrap();
    let again = explain_png(&s, "fcnn", "pattern-net").await;
    assert_eq!(again["details"]["patterns"]["fitted_now"], false, "{again}");
    s.stop().await.unwrap();

    let s = start(config).await;
    let after = explain_png(&s, "fcnn", "pattern-net").await;
    assert_eq!(after["details"]["patterns"]["fitted_now"], true, "{after}");
    s.stop().await.unwrap();
}
