//! Object detection: a zoo detector (`explaind::onnx::zoo::detector`, YOLOv8's output layout)
//! whose candidate in the lower-left cell reads that cell's pixels and nothing else. Its
//! predictions (letterboxed, boxes back in the image's pixels), targets, the methods that explain
//! one detection (their top pixels in that cell), the gradient of the detection's score against
//! finite differences, D-RISE, and the refusals. A real server on loopback throughout.

use crate::common;

use base64::Engine;
use common::*;
use explaind::onnx::zoo::{detector, DETECTOR_CELL, DETECTOR_SIDE};
use reqwest::StatusCode;
use serde_json::{json, Value};

const SIDE: usize = DETECTOR_SIDE as usize;
const CELL: usize = DETECTOR_CELL as usize;
/// The cell the test images light: rows 16..32, columns 0..16 (candidate 2).
fn in_cell(x: usize, y: usize) -> bool {
    x < CELL && y >= CELL
}

pub(crate) const MANIFEST: &str = "task = \"object-detection\"\nlabels = [\"bright\", \"dark\"]\n\
    [detection]\nlayout = \"yolo\"\nscore_threshold = 0.25\n";

/// A `w x h` PNG, black but for seeded bright noise where `lit(x, y)`.
fn png(w: u32, h: u32, lit: impl Fn(u32, u32) -> bool) -> Vec<u8> {
    let mut rng = Rng::new(3);
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        let v = rng.uniform(120.0, 255.0) as u8;
        if lit(x, y) {
            image::Rgb([v, v / 2 + 60, 255 - v / 3])
        } else {
            image::Rgb([0, 0, 0])
        }
    });
    let mut out = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

pub(crate) fn cell_png() -> Vec<u8> {
    png(SIDE as u32, SIDE as u32, |x, y| in_cell(x as usize, y as usize))
}

async fn start_detector() -> explaind::Service {
    let dir = temp_dir("detection-models");
    write_model(&dir, "detector", &detector(2), MANIFEST);
    // Declared with an objectness the graph's output has no room for: refused at start, the
    // others serve.
    write_model(
        &dir,
        "misdeclared",
        &detector(2),
        "task = \"object-detection\"\nlabels = [\"bright\", \"dark\", \"grey\"]\n[detection]\nlayout = \"yolo\"\n",
    );
    start(test_config(&dir)).await
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

async fn explain(s: &explaind::Service, method: &str, body: Value) -> reqwest::Response {
    post_json(s, &format!("/v1/models/detector/explain/{method}"), &body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn predict_answers_the_detection_in_the_image_pixels_and_a_bad_layout_is_refused_at_start() {
    let s = start_detector().await;
    let v = ok_json(post_json(&s, "/v1/models/detector/predict", &json!({"image": b64(&cell_png())})).await).await;
    let found = v["detections"].as_array().unwrap();
    assert_eq!(found.len(), 1, "{v}");
    assert_eq!(found[0]["label"], "bright");
    assert_eq!(found[0]["box"], json!([0.0, 16.0, 16.0, 32.0]));
    assert!(found[0]["score"].as_f64().unwrap() > 0.5, "{v}");
    assert!(v.get("outputs").is_none(), "a detector's raw outputs are left out: {v}");
    // A 64 x 32 image is letterboxed (halved, 8 rows of pad above): the cell's box comes back
    // doubled, shifted and clipped to the image.
    let wide = png(64, 32, |x, y| x < 32 && y >= 16);
    let v = ok_json(post_json(&s, "/v1/models/detector/predict", &json!({"image": b64(&wide)})).await).await;
    assert_eq!(v["detections"][0]["box"], json!([0.0, 16.0, 32.0, 32.0]), "{v}");
    // A black image: nothing scores over the threshold.
    let black = png(SIDE as u32, SIDE as u32, |_, _| false);
    let v = ok_json(post_json(&s, "/v1/models/detector/predict", &json!({"image": b64(&black)})).await).await;
    assert_eq!(v["detections"], json!([]), "{v}");

    let listed = get_json(&s, "/v1/models").await;
    let failed = listed["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 1, "{listed}");
    let why = failed[0]["error"].as_str().unwrap();
    assert!(
        why.contains("detection.layout") && why.contains("`output0` has shape [?, 6, 4]") || why.contains("output0"),
        "{why}"
    );
    assert_discloses_nothing(why);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_method_explaining_the_detection_finds_its_cell() {
    let s = start_detector().await;
    let info = get_json(&s, "/v1/models/detector").await;
    let applicable: Vec<String> = info["methods"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m.as_str().map(String::from))
        .collect();
    // Whether a method answers an image it made rather than an attribution, as the API says.
    let makes_image = |method: &str| {
        info["method_details"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == method && m["capabilities"]["makes_image"] == true)
    };
    let image = b64(&cell_png());
    // Small sample counts: the model reads one cell, so few samples find it.
    let params = |m: &str| match m {
        "rise" | "d-rise" => json!({"masks": 200}),
        "kernel-shap" | "lime" => json!({"samples": 200}),
        "integrated-gradients" => json!({"steps": 16}),
        "smoothgrad" => json!({"samples": 8}),
        _ => json!({}),
    };
    let mut explained = Vec::new();
    for method in &applicable {
        // Extremal perturbation blurs what it hides and keeps a smooth mask of a fixed area (a
        // minute of passes at its defaults); its own tests (tests/it/extremal.rs) give it models
        // made for that.
        // A method that makes an image answers no attribution (tests/it/actmax.rs).
        if method == "extremal-perturbation" || makes_image(method) {
            continue;
        }
        let body = json!({"image": image, "target": {"detection": 0}, "seed": 5, "params": params(method)});
        let started = std::time::Instant::now();
        let r = explain(&s, method, body).await;
        eprintln!("{method}: {:?}", started.elapsed());
        let status = r.status();
        let v: Value = r.json().await.unwrap();
        if status != StatusCode::OK {
            // Refused for this model (a CAM layer, a reference set): said so, and not a 5xx.
            assert!(status.is_client_error(), "{method}: {status} {v}");
            continue;
        }
        let Some(map) = v["attributions"]["values"].as_array() else {
            continue;
        };
        if v["attributions"]["shape"] != json!([SIDE, SIDE]) {
            continue;
        }
        assert_eq!(v["target"]["label"], "bright", "{method}: {}", v["target"]);
        let map: Vec<f64> = map.iter().map(|x| x.as_f64().unwrap()).collect();
        let hottest = (0..SIDE * SIDE).max_by(|a, b| map[*a].total_cmp(&map[*b])).unwrap();
        assert!(
            in_cell(hottest % SIDE, hottest / SIDE),
            "{method}: the hottest pixel ({}, {}) is outside the cell",
            hottest % SIDE,
            hottest / SIDE
        );
        explained.push(method.clone());
    }
    for m in [
        "saliency",
        "integrated-gradients",
        "grad-cam",
        "occlusion",
        "rise",
        "d-rise",
    ] {
        assert!(
            explained.iter().any(|e| e == m),
            "{m} did not explain the detection: {explained:?}"
        );
    }
}

/// The scalar a detection's gradient differentiates is the candidate's class score: a one-hot
/// over the output row at its position. The backward graph's gradient of it agrees with central
/// differences of the forward model's score.
#[test]
fn the_gradient_of_the_detection_score_passes_finite_differences() {
    use common::gradcheck::{backward, run_output, runner};
    let model = detector(2);
    let bw = backward(
        &model,
        "images",
        &[1, 3, SIDE, SIDE],
        "output0",
        &[],
        &explaind::onnx::autodiff::RuleTable::exact(),
    );
    let runner = runner();
    let mut fwd = runner.session(&model).unwrap();
    let mut bwd = runner.session(&bw.model).unwrap();
    let mut rng = Rng::new(9);
    let x: Vec<f32> = (0..3 * SIDE * SIDE)
        .map(|i| {
            let (y, xx) = ((i % (SIDE * SIDE)) / SIDE, i % SIDE);
            if in_cell(xx, y) {
                rng.uniform(0.2, 1.0)
            } else {
                0.0
            }
        })
        .collect();
    // Candidate 2 (the lit cell), class 0: row 4 of the [6, 4] output.
    let position = 4 * 4 + 2;
    let mut w = vec![0f32; 24];
    w[position] = 1.0;
    let dims = vec![1, 3, SIDE, SIDE];
    let feeds = [
        ("images", dims.clone(), x.clone()),
        (explaind::onnx::autodiff::WEIGHTS_INPUT, vec![1, 6, 4], w),
    ];
    let (_, grad) = run_output(&mut bwd, &feeds, &bw.input_grad);
    let mut score =
        |xs: Vec<f32>| -> f64 { run_output(&mut fwd, &[("images", dims.clone(), xs)], "output0").1[position] as f64 };
    let h = 1e-2f32;
    let mut checked = 0;
    for i in (0..x.len()).step_by(37) {
        let (mut plus, mut minus) = (x.clone(), x.clone());
        plus[i] += h;
        minus[i] -= h;
        let numeric = (score(plus) - score(minus)) / (2.0 * h as f64);
        let analytic = grad[i] as f64;
        assert!(
            (numeric - analytic).abs() <= 2e-3 + 2e-2 * numeric.abs(),
            "pixel {i}: analytic {analytic}, numeric {numeric}"
        );
        checked += 1;
        let (y, xx) = ((i % (SIDE * SIDE)) / SIDE, i % SIDE);
        if !in_cell(xx, y) {
            assert_eq!(analytic, 0.0, "pixel {i} is outside the cell");
        }
    }
    assert!(checked > 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_name_a_detection_or_a_box_and_bad_ones_are_refused() {
    let s = start_detector().await;
    let image = b64(&cell_png());
    // The box target finds the same detection as {"detection": 0}.
    let by_index = ok_json(explain(&s, "saliency", json!({"image": image, "target": {"detection": 0}})).await).await;
    let by_box = ok_json(
        explain(
            &s,
            "saliency",
            json!({"image": image, "target": {"box": [1.0, 17.0, 15.0, 30.0], "label": "bright"}}),
        )
        .await,
    )
    .await;
    assert_eq!(by_index["target"], by_box["target"]);
    // The best detection's gradient is one pass (the graph takes the highest class score, checked
    // against the detections decoded from the same pass); a box target's, a forward pass and then
    // the backward one.
    assert_eq!(by_index["stats"]["model_rows"], 1, "{}", by_index["stats"]);
    assert_eq!(by_box["stats"]["model_rows"], 2, "{}", by_box["stats"]);
    assert_eq!(
        by_index["detection"]["box"],
        json!([0.0, 16.0, 16.0, 32.0]),
        "{by_index}"
    );
    assert_eq!(by_index["detection"]["label"], "bright");
    assert_eq!(by_index["attributions"]["values"], by_box["attributions"]["values"]);
    // Refusals, each naming the fault.
    let cases = [
        (
            json!({"detection": 3}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-input",
            "found 1 detection",
        ),
        (
            json!({"box": [0.0, 0.0, 40.0, 10.0]}),
            StatusCode::BAD_REQUEST,
            "invalid-request",
            "outside the image",
        ),
        (
            json!({"box": [5.0, 0.0, 1.0, 10.0]}),
            StatusCode::BAD_REQUEST,
            "invalid-request",
            "empty",
        ),
        (
            json!({"box": [0.0, 16.0, 16.0, 32.0], "label": "cat"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-input",
            "no class labelled `cat`",
        ),
        (
            json!("bright"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-input",
            "a detector's targets",
        ),
    ];
    for (target, status, slug, says) in cases {
        let r = explain(&s, "saliency", json!({"image": image, "target": target})).await;
        let body = problem(r, status, slug).await;
        assert!(body["detail"].as_str().unwrap().contains(says), "{target}: {body}");
    }
    let black = b64(&png(SIDE as u32, SIDE as u32, |_, _| false));
    let r = explain(&s, "saliency", json!({"image": black})).await;
    let body = problem(r, StatusCode::UNPROCESSABLE_ENTITY, "invalid-input").await;
    assert!(body["detail"].as_str().unwrap().contains("no detection"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_picture_outlines_the_explained_box() {
    let s = start_detector().await;
    let r = post_json(
        &s,
        "/v1/models/detector/explain/grad-cam",
        &json!({"image": b64(&cell_png()), "target": {"detection": 0}, "format": "png"}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let png = image::load_from_memory(&r.bytes().await.unwrap()).unwrap().to_rgb8();
    let green = |x: u32, y: u32| png.get_pixel(x, y).0 == [0, 255, 64];
    // The box [0, 16, 16, 32] on the 32 x 32 image: its outline, not its inside.
    assert!(
        green(0, 24) && green(8, 16) && green(15, 24),
        "no outline at the box's edges"
    );
    assert!(!green(8, 24) && !green(24, 8), "the outline spills");
}

/// The README's detection tour (its `### Object detection` section), run as written against the
/// zoo detector, in a folder holding the image it sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_detection_tour_works_as_written() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let section = readme
        .split("### Object detection")
        .nth(1)
        .unwrap()
        .split("\n## ")
        .next()
        .unwrap();
    let block = section.split("```sh\n").nth(1).unwrap().split("```").next().unwrap();
    let mut commands = Vec::new();
    let mut current = String::new();
    for line in block
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
    {
        current.push_str(line.trim_end().trim_end_matches('\\'));
        current.push(' ');
        if !line.trim_end().ends_with('\\') {
            commands.push(std::mem::take(&mut current));
        }
    }
    assert_eq!(commands.len(), 3, "{commands:?}");
    let s = start_detector().await;
    let dir = temp_dir("readme-detection");
    std::fs::write(dir.join("cell.png"), cell_png()).unwrap();
    let mut answers = Vec::new();
    for command in commands {
        let command = command.replace("localhost:8080", &s.addr.to_string());
        let mut shell = std::process::Command::new("sh");
        shell
            .arg("-c")
            .arg(format!("set -e; {command} --fail-with-body"))
            .current_dir(&dir);
        let stdout = run_ok(shell, command.clone()).await;
        assert!(!stdout.contains("/problems/"), "{command}\n{stdout}");
        answers.push(stdout);
    }
    let predicted: Value = serde_json::from_str(&answers[0]).unwrap();
    assert_eq!(predicted["detections"][0]["label"], "bright", "{predicted}");
    let explained: Value = serde_json::from_str(&answers[1]).unwrap();
    assert_eq!(
        explained["detection"]["box"],
        json!([0.0, 16.0, 16.0, 32.0]),
        "{explained}"
    );
    let png = image::load_from_memory(&std::fs::read(dir.join("d-rise.png")).unwrap()).unwrap();
    assert_eq!(png.width(), SIDE as u32);
}

/// A head with an objectness (YOLOv5's layout): the zoo detector's first class channel read as the
/// objectness. A detection's score is objectness x class score, and the gradient methods explain
/// that product: the served saliency map is the product rule's gradient, |d(obj * cls)/dx|.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_objectness_the_score_and_its_gradient_are_the_products() {
    use common::gradcheck::{backward, run_output, runner};
    let dir = temp_dir("detection-objectness");
    let manifest = "task = \"object-detection\"\nlabels = [\"a\", \"b\"]\n\
        [detection]\nlayout = \"yolo\"\nobjectness = true\nscore_threshold = 0.0\n";
    write_model(&dir, "yolov5ish", &detector(3), manifest);
    let s = start(test_config(&dir)).await;
    // Every cell lit: every candidate has a gradient.
    let png = png(SIDE as u32, SIDE as u32, |_, _| true);
    // The input as preprocessing makes it: a 32 x 32 image letterboxes onto itself, x / 255, NCHW.
    let rgb = image::load_from_memory(&png).unwrap().to_rgb8();
    let mut x = vec![0f32; 3 * SIDE * SIDE];
    for (px, py, p) in rgb.enumerate_pixels() {
        for c in 0..3 {
            x[c * SIDE * SIDE + py as usize * SIDE + px as usize] = f32::from(p.0[c]) / 255.0;
        }
    }
    let model = detector(3);
    let runner = runner();
    let mut fwd = runner.session(&model).unwrap();
    let dims = vec![1, 3, SIDE, SIDE];
    let (_, out) = run_output(&mut fwd, &[("images", dims.clone(), x.clone())], "output0");
    let v = ok_json(post_json(&s, "/v1/models/yolov5ish/predict", &json!({"image": b64(&png)})).await).await;
    let top = &v["detections"][0];
    // The candidate is the cell of the box: objectness at row 4, classes at rows 5 and 6.
    let corner = |i: usize| top["box"][i].as_f64().unwrap() as usize / CELL;
    let k = corner(1) * 2 + corner(0);
    let (obj, a, b) = (out[4 * 4 + k], out[5 * 4 + k], out[6 * 4 + k]);
    let (class, cls) = if a >= b { (0, a) } else { (1, b) };
    assert_eq!(top["label"], ["a", "b"][class], "{v}");
    let best = (0..4)
        .map(|k| out[4 * 4 + k] * out[5 * 4 + k].max(out[6 * 4 + k]))
        .fold(0f32, f32::max);
    assert_eq!(obj * cls, best, "the best detection is the best product");
    let score = top["score"].as_f64().unwrap();
    assert!(
        (score - f64::from(obj * cls)).abs() < 1e-6,
        "score {score}, objectness x class {}",
        obj * cls
    );

    let answer = ok_json(
        post_json(
            &s,
            "/v1/models/yolov5ish/explain/saliency",
            &json!({"image": b64(&png), "target": {"detection": 0}}),
        )
        .await,
    )
    .await;
    let served: Vec<f64> = answer["attributions"]["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let bw = backward(
        &model,
        "images",
        &dims,
        "output0",
        &[],
        &explaind::onnx::autodiff::RuleTable::exact(),
    );
    let mut bwd = runner.session(&bw.model).unwrap();
    let mut w = vec![0f32; 7 * 4];
    w[4 * 4 + k] = cls;
    w[(5 + class) * 4 + k] = obj;
    let feeds = [
        ("images", dims.clone(), x.clone()),
        (explaind::onnx::autodiff::WEIGHTS_INPUT, vec![1, 7, 4], w),
    ];
    let (_, grad) = run_output(&mut bwd, &feeds, &bw.input_grad);
    let expected: Vec<f64> = (0..SIDE * SIDE)
        .map(|p| {
            (0..3)
                .map(|c| f64::from(grad[c * SIDE * SIDE + p].abs()))
                .fold(0.0, f64::max)
        })
        .collect();
    let scale = expected.iter().copied().fold(0.0, f64::max);
    assert!(scale > 0.0);
    for (p, (s, e)) in served.iter().zip(&expected).enumerate() {
        assert!((s - e).abs() <= 1e-4 * scale, "pixel {p}: served {s}, product rule {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uncertainty_finds_the_detection_in_every_view_in_its_place() {
    let s = start_detector().await;
    let models = get_json(&s, "/v1/models/detector").await;
    assert!(
        models["uncertainty"].as_array().unwrap().contains(&json!("tta")),
        "{models}"
    );
    let image = b64(&cell_png());
    let ask = |body: Value| {
        let s = &s;
        async move { post_json(s, "/v1/models/detector/uncertainty", &body).await }
    };
    // Eight turned and mirrored views: the lit cell moves to every corner of the input, each
    // view's box comes back onto the cell, so every view finds the detection exactly in place.
    let v = ok_json(ask(json!({"image": image, "method": "tta", "params": {"transforms": "d4"}})).await).await;
    let u = &v["uncertainty"];
    assert_eq!(u["samples"], json!(null), "{v}");
    let found = u["detection"]["detections"].as_array().unwrap();
    assert_eq!(found.len(), 1, "{v}");
    let d = &found[0];
    assert_eq!(d["box"], json!([0.0, 16.0, 16.0, 32.0]), "{v}");
    assert_eq!(d["label"], "bright");
    assert_eq!(d["found"], 1.0, "{v}");
    assert!((d["iou_mean"].as_f64().unwrap() - 1.0).abs() < 1e-6, "{v}");
    assert!(d["score_std"].as_f64().unwrap() >= 0.0);
    assert_eq!(u["detection"]["unmatched_mean"], 0.0, "{v}");
    assert_eq!(u["predictions"][0]["label"], "bright", "{v}");
    // The class-level figures are each class's best score per sample: `bright` near the
    // detection's own score.
    let mean = u["mean"][0].as_f64().unwrap();
    assert!((mean - d["score_mean"].as_f64().unwrap()).abs() < 1e-6, "{v}");

    // A letterboxed image: boxes in the image's pixels, as predict gives them.
    let wide = b64(&png(64, 32, |x, y| x < 32 && y >= 16));
    let v = ok_json(ask(json!({"image": wide, "method": "tta"})).await).await;
    let d = &v["uncertainty"]["detection"]["detections"][0];
    assert_eq!(d["box"], json!([0.0, 16.0, 32.0, 32.0]), "{v}");

    // Dropout at rate 0 changes nothing: every sample is the input's own pass.
    let v = ok_json(ask(json!({"image": image, "params": {"samples": 4, "p": 0.0}, "seed": 1})).await).await;
    let d = &v["uncertainty"]["detection"]["detections"][0];
    assert_eq!(
        (d["found"].as_f64(), d["score_std"].as_f64()),
        (Some(1.0), Some(0.0)),
        "{v}"
    );
    assert!(
        (d["score_mean"].as_f64().unwrap() - d["score"].as_f64().unwrap()).abs() < 1e-6,
        "{v}"
    );
    // At rate 0.5 the samples disagree; the figures stay in their ranges.
    let v = ok_json(ask(json!({"image": image, "params": {"samples": 16, "p": 0.5}, "seed": 1})).await).await;
    let d = &v["uncertainty"]["detection"]["detections"][0];
    let share = d["found"].as_f64().unwrap();
    assert!(
        (0.0..=1.0).contains(&share) && d["score_std"].as_f64().unwrap() > 0.0,
        "{v}"
    );

    // With a prediction, in the same job.
    let v = ok_json(
        post_json(
            &s,
            "/v1/models/detector/predict",
            &json!({"image": image, "uncertainty": {"method": "tta", "params": {"transforms": "d4"}}}),
        )
        .await,
    )
    .await;
    assert_eq!(v["uncertainty"]["detection"]["detections"][0]["found"], 1.0, "{v}");

    // A detector's samples are lists of boxes: neither returned whole nor explained per sample.
    for params in [
        json!({"include": ["samples"]}),
        json!({"params": {"explain_method": "saliency"}}),
    ] {
        let mut body = json!({"image": image});
        body.as_object_mut()
            .unwrap()
            .extend(params.as_object().unwrap().clone());
        let r = ask(body).await;
        let p = problem(r, StatusCode::UNPROCESSABLE_ENTITY, "unsupported-model").await;
        assert!(p["detail"].as_str().unwrap().contains("detector"), "{p}");
    }
}

/// D-RISE fills the next batch's masked images and weighs the last batch's masks on a thread of
/// its own while a batch runs: masks are still drawn and weighed in order, so a seed gives the
/// same bytes over several batches (200 masks: 64-row passes and a short last one), and another
/// seed another map.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d_rise_over_several_batches_gives_a_seed_the_same_bytes() {
    let s = start_detector().await;
    let image = b64(&cell_png());
    let map = |v: Value| v["attributions"]["values"].clone();
    let mut answers = Vec::new();
    for seed in [5, 5, 6] {
        let body = json!({"image": image, "target": {"detection": 0}, "seed": seed, "params": {"masks": 200}});
        let r = explain(&s, "d-rise", body).await;
        assert_eq!(r.status(), StatusCode::OK);
        answers.push(map(r.json().await.unwrap()));
    }
    assert!(answers[0].as_array().is_some_and(|a| a.len() == SIDE * SIDE));
    assert_eq!(answers[0], answers[1], "the same seed, another map");
    assert_ne!(answers[0], answers[2], "another seed, the same map");
}
