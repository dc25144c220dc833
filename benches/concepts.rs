//! TCAV on the bundled Fashion-MNIST CNN (models/fashion-cnn, its 1,000 bundled reference images):
//! a concept of 50 `Bag` images for the class `Bag`, at the default three layers (first, middle
//! and last CAM layer), 50 examples per set, 10 random sets (10 concept CAVs and 10 random ones
//! per layer, logistic and mean-difference):
//! - the job from submission to its result. Goal: under 2 s;
//! - its passes (`stats.activations_ms`: one forward pass of the model cut at its deepest layer,
//!   the layers its only outputs, over the concept's and the random sets' rows;
//!   `stats.gradients_ms`: one backward pass to the layers over the class's rows) against the same
//!   rows run raw through one ONNX Runtime session of the same graph, at the service's rows per
//!   pass, tensors prepared beforehand. Goal: at most 1.2x. The whole model's plain forward pass
//!   over the same rows is printed beside them.
//!
//! Run with `cargo bench --bench concepts`.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use base64::Engine;
use explaind::onnx::autodiff::{RuleSet, WEIGHTS_INPUT};
use explaind::runtime::gradients::GradientKey;
use explaind::runtime::sessions::create_session_from_bytes;
use ort::value::TensorRef;
use serde_json::{json, Value};

const EXAMPLES: usize = 50;
const RUNS: usize = 10;
const ROUNDS: usize = 7;

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("target").join("bench-concepts");
    let _ = std::fs::remove_dir_all(&dir);
    let models = dir.join("models");
    common::copy_bundled(&root, &models, "fashion-cnn", &["model.onnx", "model.toml"]);
    let config = common::config(&models);
    let (max_batch, max_pass_bytes) = (config.max_batch, config.max_pass_bytes);
    let (rt, service) = common::serve(config);
    let state = service.state.clone();
    let model = state.registry.get("fashion-cnn").unwrap().clone();
    let base = format!("http://{}", service.addr);
    let http = reqwest::Client::new();

    // The concept: the first 50 bundled `Bag` images.
    let reference = root.join("models/fashion-cnn/reference");
    let labels = std::fs::read_to_string(reference.join("labels.csv")).unwrap();
    let bags: Vec<&str> = labels
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(','))
        .filter(|(_, label)| label.trim() == "Bag" || label.trim() == "8")
        .map(|(id, _)| id)
        .take(EXAMPLES)
        .collect();
    assert_eq!(bags.len(), EXAMPLES, "the bundled set holds 50 bags");
    let body: String = bags
        .iter()
        .map(|id| {
            let png = std::fs::read(reference.join("images").join(id)).unwrap();
            json!({"id": id, "image": base64::engine::general_purpose::STANDARD.encode(png)}).to_string() + "\n"
        })
        .collect();
    let status = rt.block_on(async {
        http.post(format!("{base}/v1/models/fashion-cnn/concepts/bags"))
            .header("content-type", "application/x-ndjson")
            .body(body)
            .send()
            .await
            .unwrap()
            .status()
    });
    assert_eq!(status.as_u16(), 201);

    // A job from submission to its result.
    let job = |path: &str, body: Value| -> (Duration, Value) {
        rt.block_on(async {
            let began = Instant::now();
            let resp = http.post(format!("{base}{path}")).json(&body).send().await.unwrap();
            assert_eq!(resp.status().as_u16(), 202);
            let location = resp.headers()["location"].to_str().unwrap().to_string();
            loop {
                let v: Value = http
                    .get(format!("{base}{location}"))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                match v["state"].as_str() {
                    Some("done") => return (began.elapsed(), v["result"].clone()),
                    Some("queued" | "running") => tokio::time::sleep(Duration::from_millis(2)).await,
                    _ => panic!("{v}"),
                }
            }
        })
    };
    let run = |cav: &str, seed: u64| {
        job(
            "/v1/models/fashion-cnn/tcav",
            json!({"concept": "bags", "target": "Bag", "runs": RUNS, "examples": EXAMPLES, "cav": cav, "seed": seed}),
        )
    };
    // The first run builds the backward model and the sessions.
    let (first, answer) = run("logistic", 0);
    let layers: Vec<String> = answer["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["layer"].as_str().unwrap().to_string())
        .collect();
    let mut figures = Vec::new();
    for cav in ["logistic", "mean-difference"] {
        let rounds: Vec<(Duration, Value)> = (1..=ROUNDS as u64).map(|s| run(cav, s)).collect();
        let stat = |k: &str| {
            common::median(
                rounds
                    .iter()
                    .map(|(_, v)| Duration::from_secs_f64(v["stats"][k].as_f64().unwrap() / 1e3))
                    .collect(),
            )
        };
        let wall = common::median(rounds.iter().map(|r| r.0).collect());
        let pool = rounds[0].1["random_sets"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|s| s.as_array().unwrap().iter().map(|i| i.as_str().unwrap().to_string()))
            .collect::<std::collections::BTreeSet<_>>();
        let class_rows = rounds[0].1["class_examples"].as_u64().unwrap() as usize;
        figures.push((
            cav,
            wall,
            stat("decode_ms"),
            stat("activations_ms"),
            stat("gradients_ms"),
            stat("cavs_ms"),
            pool,
            class_rows,
            rounds[0].1["layers"].clone(),
        ));
    }

    // Raw passes of the graphs the job ran (the model cut at its deepest layer, its only outputs
    // the layers; the backward model to the layers), through ONNX Runtime sessions of their own,
    // over as many rows, as many rows a pass as the service ran (its pass budget over the model's
    // bytes per row, at most `max_batch`), every pass's tensors prepared beforehand and its
    // outputs left where ONNX Runtime put them. The model's plain forward pass over the same rows
    // is printed for context.
    let (_, _, _, _, _, _, random_ids, class_rows, _) = figures[0].clone();
    let pool = random_ids.len();
    let forward_rows = EXAMPLES + pool;
    let row_bytes = state.gradients.row_bytes(&model).unwrap();
    let per_pass = |bytes: u64| {
        usize::try_from(max_pass_bytes / bytes.max(1))
            .unwrap()
            .clamp(1, max_batch)
    };
    // A forward pass holds about a third of what a backward one does (the service's estimate).
    let (forward_per_pass, backward_per_pass) = (per_pass(row_bytes / 3), per_pass(row_bytes));
    let env = explaind::runtime::library::init(None).unwrap();
    let to_layers = state.gradients.to_outputs(&model, &layers).unwrap();
    let mut forward = create_session_from_bytes(env, &to_layers).unwrap();
    let mut plain = create_session_from_bytes(env, &model.bytes).unwrap();
    let key = GradientKey {
        model: model.name.clone(),
        layers: layers.clone(),
        rules: RuleSet::Exact,
        input_grad: false,
    };
    let built = state.gradients.build(&model, &key).unwrap();
    let mut backward = create_session_from_bytes(env, &built.bytes).unwrap();
    // The rows the first round ran: the concept's bags and its random sets', then the class's.
    let reference_set = state.references.get("fashion-cnn").unwrap();
    let index = |id: &str| reference_set.ids.iter().position(|i| i == id).unwrap();
    let mut forward_index: Vec<usize> = bags.iter().map(|id| index(id)).collect();
    let mut drawn: Vec<usize> = random_ids.iter().map(|id| index(id)).collect();
    drawn.sort_unstable();
    forward_index.extend(drawn);
    let class_index: Vec<usize> = (0..reference_set.len())
        .filter(|&i| reference_set.labels[i] == 8)
        .take(class_rows)
        .collect();
    let rows_of = |index: &[usize]| -> Vec<f32> {
        let t =
            explaind::examples::source::rows_tensor(&reference_set.inputs, &reference_set.ids, index, &model, u64::MAX)
                .unwrap();
        t.as_f32().unwrap().to_vec()
    };
    let (forward_x, class_x) = (rows_of(&forward_index), rows_of(&class_index));
    let w: Vec<f32> = (0..class_rows.max(forward_rows) * 10)
        .map(|i| if i % 10 == 8 { 1.0 } else { 0.0 })
        .collect();
    let raw_once = |session: &mut ort::session::Session, rows: usize, weights: bool, per_pass: usize| -> Duration {
        let x: &[f32] = if weights { &class_x } else { &forward_x };
        assert_eq!(x.len(), rows * 784);
        let began = Instant::now();
        for start in (0..rows).step_by(per_pass) {
            let n = (rows - start).min(per_pass);
            let mut feeds: Vec<(&str, ort::session::SessionInputValue<'_>)> = vec![(
                "input",
                TensorRef::from_array_view((vec![n, 1, 28, 28], &x[start * 784..(start + n) * 784]))
                    .unwrap()
                    .into(),
            )];
            if weights {
                feeds.push((
                    WEIGHTS_INPUT,
                    TensorRef::from_array_view((vec![n, 10], &w[start * 10..(start + n) * 10]))
                        .unwrap()
                        .into(),
                ));
            }
            drop(session.run(feeds).unwrap());
        }
        began.elapsed()
    };
    let raw = |session: &mut ort::session::Session, rows: usize, weights: bool, per_pass: usize| -> Duration {
        raw_once(session, rows, weights, per_pass);
        common::median(
            (0..ROUNDS)
                .map(|_| raw_once(session, rows, weights, per_pass))
                .collect(),
        )
    };
    // On a thread of its own, as the service's workers run their passes (the bench's main thread
    // ran them up to 3x slower under load: its figures are printed too).
    let own_thread = |session: &mut ort::session::Session, rows: usize, weights: bool, per_pass: usize| {
        std::thread::scope(|s| s.spawn(|| raw(session, rows, weights, per_pass)).join().unwrap())
    };
    // Under a load that changes from second to second, passes timed one after the other are
    // compared: each round runs the job (mean-difference, seed 1: the rows above) and then the raw
    // passes once, and the ratios are taken round by round.
    let mut ratios = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let (_, v) = run("mean-difference", 1);
        let once = |session: &mut ort::session::Session, rows: usize, weights: bool, per_pass: usize| {
            std::thread::scope(|s| s.spawn(|| raw_once(session, rows, weights, per_pass)).join().unwrap())
        };
        let f = once(&mut forward, forward_rows, false, forward_per_pass);
        let b = once(&mut backward, class_rows, true, backward_per_pass);
        ratios
            .0
            .push(v["stats"]["activations_ms"].as_f64().unwrap() / (f.as_secs_f64() * 1e3));
        ratios
            .1
            .push(v["stats"]["gradients_ms"].as_f64().unwrap() / (b.as_secs_f64() * 1e3));
    }
    for r in [&mut ratios.0, &mut ratios.1] {
        r.sort_by(f64::total_cmp);
    }
    println!(
        "round by round (job, then its raw passes; {ROUNDS} rounds): activations {:.2}x (median; {:.2}-{:.2}), directional derivatives {:.2}x ({:.2}-{:.2}) (goal <= 1.2)",
        ratios.0[ROUNDS / 2],
        ratios.0[0],
        ratios.0[ROUNDS - 1],
        ratios.1[ROUNDS / 2],
        ratios.1[0],
        ratios.1[ROUNDS - 1]
    );
    let main_forward = raw(&mut forward, forward_rows, false, forward_per_pass);
    let main_backward = raw(&mut backward, class_rows, true, backward_per_pass);
    let raw_forward = own_thread(&mut forward, forward_rows, false, forward_per_pass);
    let raw_plain = own_thread(&mut plain, forward_rows, false, forward_per_pass);
    let raw_backward = own_thread(&mut backward, class_rows, true, backward_per_pass);

    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "concepts benchmark: fashion-cnn, concept `bags` ({EXAMPLES} images) for class `Bag`, layers {layers:?}, {RUNS} random sets of {EXAMPLES} ({pool} distinct rows), {class_rows} class rows; median of {ROUNDS}"
    );
    println!("first run (builds the backward model): {:.0} ms", ms(first));
    println!(
        "raw ONNX Runtime passes, {forward_per_pass} rows a forward pass and {backward_per_pass} a backward one (as the service): \
         the model cut at its deepest layer {:.1} ms, the whole model (plain forward, for context) {:.1} ms, over {forward_rows} rows; \
         the backward pass to the layers {:.1} ms over {class_rows} rows (on the bench's main thread: {:.1} ms and {:.1} ms)",
        ms(raw_forward),
        ms(raw_plain),
        ms(raw_backward),
        ms(main_forward),
        ms(main_backward)
    );
    for (cav, wall, decode, acts, grads, cavs, _, _, table) in &figures {
        println!(
            "tcav cav={cav}: {:.0} ms from submission to result (goal < 2000 ms); on the worker: decode {:.1} ms, activations {:.1} ms, gradients {:.1} ms, CAVs and scores {:.1} ms",
            ms(*wall),
            ms(*decode),
            ms(*acts),
            ms(*grads),
            ms(*cavs)
        );
        for l in table.as_array().unwrap() {
            println!(
                "  {}: score {:.2} (random CAVs {:.2}), p = {:.3}",
                l["layer"].as_str().unwrap(),
                l["score"].as_f64().unwrap(),
                l["random_score"].as_f64().unwrap(),
                l["p_value"].as_f64().unwrap()
            );
        }
        println!(
            "  activations: {:.1} ms against {:.1} ms raw for {forward_rows} rows: ratio {:.2} (goal <= 1.2); gradients: {:.1} ms against {:.1} ms raw for {class_rows} rows: ratio {:.2} (goal <= 1.2)",
            ms(*acts),
            ms(raw_forward),
            ms(*acts) / ms(raw_forward),
            ms(*grads),
            ms(raw_backward),
            ms(*grads) / ms(raw_backward)
        );
    }
    // Pictures for the README: the chart of the first round, and what each layer knows about the
    // class (every CAM layer, 1,000 reference rows).
    let png = |v: &Value| {
        base64::engine::general_purpose::STANDARD
            .decode(v["chart_png"].as_str().unwrap())
            .unwrap()
    };
    std::fs::write(dir.join("tcav.png"), png(&answer)).unwrap();
    let info = job(
        "/v1/models/fashion-cnn/layer-information",
        json!({"max_rows": 1000, "seed": 1,
               "layers": ["conv1", "relu1", "pool1", "conv2", "relu2", "pool2", "conv3", "relu3"]}),
    );
    std::fs::write(dir.join("layer-information.png"), png(&info.1)).unwrap();
    println!(
        "layer information over {} reference rows, every CAM layer: {:.0} ms; H(label) = {:.3} nats, the estimator's ceiling {:.3}",
        info.1["rows"],
        ms(info.0),
        info.1["label_entropy"].as_f64().unwrap(),
        info.1["estimator_ceiling"].as_f64().unwrap()
    );
    for l in info.1["layers"].as_array().unwrap() {
        println!(
            "  {} ({} channels): {:.3} nats (shuffled labels {:.3}), shared with the next {}",
            l["layer"].as_str().unwrap(),
            l["channels"],
            l["mutual_information"].as_f64().unwrap(),
            l["shuffled"].as_f64().unwrap(),
            l["redundancy_with_next"]
                .as_f64()
                .map_or("-".to_string(), |v| format!("{v:.3}"))
        );
    }
    println!("charts: {}", dir.display());
    rt.block_on(service.stop()).unwrap();
}
