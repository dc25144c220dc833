//! Activation maximisation: on the classifier that reads one region of its image the optimised
//! image's energy lies in that region and the class score rises; a channel's mean activation
//! rises; the same seed gives the same bytes; it runs as a job with progress; on the bundled
//! Fashion-MNIST CNN each class's image resembles its class's mean training image more than the
//! others'; bad parameters are refused.

use crate::channels::start_channels;
use crate::common::*;
use crate::explain::{noise_png, region_model, REACH, REGION_MANIFEST, SIDE};
use base64::Engine;
use explaind::onnx::zoo::channels::{CHANNELS, DECIDING_CHANNEL};
use reqwest::StatusCode;
use serde_json::{json, Value};

const PATH: &str = "/v1/models/region/explain/activation-maximisation";

async fn start_region() -> explaind::Service {
    let dir = temp_dir("actmax-models");
    write_model(&dir, "region", &region_model(), REGION_MANIFEST);
    copy_bundled("fashion-cnn", &dir);
    start(test_config(&dir)).await
}

fn b64(png: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(png)
}

/// The answer's image, grayscale, values in [0, 1].
fn image_of(v: &Value) -> (usize, usize, Vec<f64>) {
    let png = base64::engine::general_purpose::STANDARD
        .decode(v["details"]["image_png"].as_str().unwrap())
        .unwrap();
    let img = image::load_from_memory(&png).unwrap().to_luma8();
    let values = img.pixels().map(|p| p.0[0] as f64 / 255.0).collect();
    (img.width() as usize, img.height() as usize, values)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_lights_the_region_the_model_reads_and_its_score_rises() {
    let s = start_region().await;
    let image = b64(&noise_png(SIDE as u32, 9).0);
    let v = ok_json(
        post_json(
            &s,
            PATH,
            // A little total variation keeps the Fourier image from spreading where no gradient
            // reaches (defaults: 56% of the energy in the region, 3.8 times the density outside).
            &json!({"image": image, "target": 0, "seed": 7, "params": {"iterations": 128, "total_variation": 0.02}}),
        )
        .await,
    )
    .await;
    let d = &v["details"];
    assert_eq!(d["objective"], "class");
    assert_eq!(d["curve"].as_array().unwrap().len(), 128);
    let (initial, last) = (d["initial_score"].as_f64().unwrap(), d["final_score"].as_f64().unwrap());
    assert!(last > initial + 1.0, "the score went from {initial} to {last}");
    let (w, h, values) = image_of(&v);
    assert_eq!((w, h), (SIDE, SIDE));
    // Energy: squared distance from the mid-grey the optimisation starts at.
    let (mut inside, mut outside) = (0f64, 0f64);
    for y in 0..SIDE {
        for x in 0..SIDE {
            let e = (values[y * SIDE + x] - 0.5).powi(2);
            if REACH.contains(&y) && REACH.contains(&x) {
                inside += e;
            } else {
                outside += e;
            }
        }
    }
    let fraction = inside / (inside + outside);
    println!(
        "activation maximisation, region model: {:.1}% of the energy in the region (25% of the pixels)",
        100.0 * fraction
    );
    assert!(
        fraction > 0.6,
        "only {fraction} of the image's energy lies in the region"
    );
    assert_eq!(v["seed"], 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_seed_gives_the_same_bytes() {
    let s = start_region().await;
    let image = b64(&noise_png(SIDE as u32, 9).0);
    let run = |seed: u64| {
        let body = json!({"image": image, "target": 0, "seed": seed,
                          "params": {"iterations": 16, "total_variation": 0.01, "l2": 0.1}});
        let s = &s;
        async move { ok_json(post_json(s, PATH, &body).await).await["details"].clone() }
    };
    let (a, b, c) = (run(3).await, run(3).await, run(4).await);
    assert_eq!(a["image_png"], b["image_png"]);
    assert_eq!(a["curve"], b["curve"]);
    assert_ne!(a["image_png"], c["image_png"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_s_mean_activation_rises_and_the_job_reports_progress() {
    let s = start_channels().await;
    let image = b64(&noise_png(16, 2).0);
    let r = post_json(
        &s,
        "/v1/jobs",
        &json!({"model": "one-channel", "method": "activation-maximisation", "image": image, "seed": 1,
                "include": ["overlay"],
                "params": {"channel": DECIDING_CHANNEL, "iterations": 40}}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let job = job_done(&s, &location, std::time::Duration::from_secs(60)).await;
    let v = &job["result"];
    let d = &v["details"];
    assert_eq!(d["objective"], "channel", "{v}");
    assert_eq!(d["layer"], "features");
    assert_eq!(d["channel"], DECIDING_CHANNEL);
    let (initial, last) = (d["initial_score"].as_f64().unwrap(), d["final_score"].as_f64().unwrap());
    assert!(
        last > initial,
        "channel {DECIDING_CHANNEL}'s mean went from {initial} to {last}"
    );
    // Progress counted in rows: the steps and the three forward rows around them, and the
    // input's scores.
    assert_eq!(v["stats"]["model_rows"], 40 + 3 + 1, "{}", v["stats"]);
    assert!(v["overlay_png"].is_string());
    assert_eq!(job["progress"]["done"], job["progress"]["planned"], "{job}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_fashion_class_s_image_resembles_its_mean_training_image() {
    let s = start_region().await;
    // Mean images of the bundled reference set (1,000 Fashion-MNIST training images).
    let labels: Vec<String> = ok_json(reqwest::get(url(&s, "/v1/models/fashion-cnn")).await.unwrap()).await["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap().to_string())
        .collect();
    let dir = root().join("models/fashion-cnn/reference");
    let csv = std::fs::read_to_string(dir.join("labels.csv")).unwrap();
    let mut sums = vec![vec![0f64; 28 * 28]; labels.len()];
    let mut counts = vec![0usize; labels.len()];
    for line in csv.lines().skip(1) {
        let (file, label) = line.split_once(',').unwrap();
        let class = labels.iter().position(|l| l == label).unwrap();
        let img = image::open(dir.join("images").join(file)).unwrap().to_luma8();
        for (s, p) in sums[class].iter_mut().zip(img.pixels()) {
            *s += p.0[0] as f64 / 255.0;
        }
        counts[class] += 1;
    }
    let means: Vec<Vec<f64>> = sums
        .iter()
        .zip(&counts)
        .map(|(s, n)| s.iter().map(|v| v / *n as f64).collect())
        .collect();
    let image = b64(&fashion_png());
    let mut own_best = 0;
    let mut table = Vec::new();
    for class in 0..labels.len() {
        let v = ok_json(
            post_json(
                &s,
                "/v1/models/fashion-cnn/explain/activation-maximisation",
                // The L2 penalty darkens the background the model never saw lit (lucent's L2 is
                // the norm from black); with the defaults only 2 of 10 classes match.
                &json!({"image": image, "target": class, "seed": 11,
                        "params": {"iterations": 256, "l2": 2.0, "total_variation": 0.02}}),
            )
            .await,
        )
        .await;
        let (_, _, values) = image_of(&v);
        let correlations: Vec<f64> = means.iter().map(|m| pearson(&values, m)).collect();
        let best = (0..correlations.len())
            .max_by(|a, b| correlations[*a].total_cmp(&correlations[*b]))
            .unwrap();
        own_best += usize::from(best == class);
        table.push(format!(
            "{}: own {:.2}, best {} {:.2}",
            labels[class], correlations[class], labels[best], correlations[best]
        ));
    }
    println!("activation maximisation on fashion-cnn: {own_best} of 10 classes correlate best with their own mean training image\n{}", table.join("\n"));
    assert!(own_best >= 6, "{own_best} of 10:\n{}", table.join("\n"));
}

fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let cov: f64 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = a.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = b.iter().map(|y| (y - mb).powi(2)).sum();
    cov / (va * vb).sqrt().max(1e-12)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_parameters_are_refused() {
    let s = start_channels().await;
    let image = b64(&noise_png(16, 5).0);
    let path = "/v1/models/one-channel/explain/activation-maximisation";
    for params in [
        json!({"iterations": 5000}),
        json!({"iterations": 0}),
        json!({"learning_rate": 0}),
        json!({"l2": -1}),
        json!({"start": "somewhere"}),
    ] {
        problem(
            post_json(&s, path, &json!({"image": image, "params": params})).await,
            StatusCode::BAD_REQUEST,
            "invalid-request",
        )
        .await;
    }
    let body = problem(
        post_json(
            &s,
            path,
            &json!({"image": image, "params": {"channel": 0, "layer": "nowhere"}}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid-input",
    )
    .await;
    assert!(body["detail"].as_str().unwrap().contains("features"), "{body}");
    let body = problem(
        post_json(&s, path, &json!({"image": image, "params": {"channel": CHANNELS}})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid-input",
    )
    .await;
    assert!(body["detail"].as_str().unwrap().contains("8 channels"), "{body}");
}

/// From noise the request needs no image: the optimisation is the same, at the model's declared
/// input size (the image only chose the default target, here named), as a request and as a job;
/// starting from the input without one is refused, and so is a model past the size bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starting_from_noise_needs_no_image() {
    let s = start_region().await;
    let path = "/v1/models/fashion-cnn/explain/activation-maximisation";
    let params = json!({"iterations": 8});
    let without = ok_json(post_json(&s, path, &json!({"target": 3, "seed": 5, "params": params})).await).await;
    let image = b64(&fashion_png());
    let with = ok_json(
        post_json(
            &s,
            path,
            &json!({"image": image, "target": 3, "seed": 5, "params": params}),
        )
        .await,
    )
    .await;
    assert_eq!(without["details"]["image_shape"], json!([28, 28]), "{without}");
    assert_eq!(without["details"]["image_png"], with["details"]["image_png"]);
    assert_eq!(without["details"]["curve"], with["details"]["curve"]);
    assert_eq!(without["target"]["index"], 3);
    // The default target: the top class of the mid-grey start image.
    let v = ok_json(post_json(&s, path, &json!({"seed": 5, "params": params})).await).await;
    assert!(v["target"]["index"].is_u64(), "{v}");
    let r = post_json(
        &s,
        "/v1/jobs",
        &json!({"model": "fashion-cnn", "method": "activation-maximisation", "target": 3, "seed": 5, "params": params}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let job = job_done(&s, &location, std::time::Duration::from_secs(60)).await;
    assert_eq!(
        job["result"]["details"]["image_png"], with["details"]["image_png"],
        "{job}"
    );
    // The input is needed to start from it, and by every other method.
    for (path, params) in [
        (path, json!({"start": "input"})),
        ("/v1/models/fashion-cnn/explain/saliency", json!({})),
    ] {
        let body = problem(
            post_json(&s, path, &json!({"params": params})).await,
            StatusCode::BAD_REQUEST,
            "invalid-request",
        )
        .await;
        assert!(body["detail"].as_str().unwrap().contains("exactly one of"), "{body}");
    }
    s.stop().await.unwrap();
    // A model past MAX_PIXELS is refused before its start image is made.
    let dir = temp_dir("actmax-large");
    write_model(
        &dir,
        "large",
        &explaind::onnx::zoo::channels::one_channel(257),
        crate::channels::ONE_CHANNEL_MANIFEST,
    );
    let s = start(test_config(&dir)).await;
    let body = problem(
        post_json(
            &s,
            "/v1/models/large/explain/activation-maximisation",
            &json!({"params": {"iterations": 1}}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid-input",
    )
    .await;
    assert!(body["detail"].as_str().unwrap().contains("65536 pixels"), "{body}");
    assert_discloses_nothing(body["detail"].as_str().unwrap());
}

/// The registry says which methods make an image (`capabilities.makes_image`), and such an image
/// is neither measured by attribution metrics nor compared with attributions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_capabilities_say_it_makes_an_image_and_metrics_refuse_it() {
    let s = start_region().await;
    let info = get_json(&s, "/v1/models/fashion-cnn").await;
    let makers: Vec<&str> = info["method_details"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["capabilities"]["makes_image"] == true)
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(makers, ["activation-maximisation"], "{info}");
    let image = b64(&fashion_png());
    let body = problem(
        post_json(
            &s,
            "/v1/models/fashion-cnn/explain/activation-maximisation",
            &json!({"image": image, "evaluate": ["deletion"], "params": {"iterations": 1}}),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid-request",
    )
    .await;
    assert!(body["detail"].as_str().unwrap().contains("an image it made"), "{body}");
    let body = problem(
        post_json(
            &s,
            "/v1/models/fashion-cnn/compare",
            &json!({"image": image, "methods": ["saliency", {"method": "activation-maximisation", "params": {"iterations": 1}}]}),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid-request",
    )
    .await;
    assert!(body["detail"].as_str().unwrap().contains("an image it made"), "{body}");
}

/// The PNG answers (`format` png in a JSON request, the raw image's `?format=png`, and the
/// `overlay_png` that `include: ["overlay"]` asks for) are the optimised image itself, enlarged
/// with nearest neighbours: every pixel of the picture is the JSON answer's pixel it covers (grey
/// on this grayscale model), not a heat map.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_png_answer_is_the_optimised_image() {
    let s = start_region().await;
    let path = "/v1/models/fashion-cnn/explain/activation-maximisation";
    let input = fashion_png();
    let body = json!({"image": b64(&input), "target": 3, "seed": 5, "include": ["overlay"],
                      "params": {"iterations": 8}});
    let v = ok_json(post_json(&s, path, &body).await).await;
    let (w, h, values) = image_of(&v);
    let mut as_png = body.clone();
    as_png["format"] = json!("png");
    let raw = reqwest::Client::new()
        .post(url(&s, &format!("{path}?format=png&target=3&seed=5&iterations=8")))
        .header("content-type", "image/png")
        .body(input)
        .send()
        .await
        .unwrap();
    let mut answers = Vec::new();
    for r in [post_json(&s, path, &as_png).await, raw] {
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["content-type"], "image/png");
        answers.push(r.bytes().await.unwrap().to_vec());
    }
    let overlay = base64::engine::general_purpose::STANDARD
        .decode(v["overlay_png"].as_str().unwrap())
        .unwrap();
    for (what, png) in [
        ("format png", &answers[0]),
        ("?format=png", &answers[1]),
        ("overlay_png", &overlay),
    ] {
        let picture = image::load_from_memory(png).unwrap().to_rgb8();
        let k = picture.width() as usize / w;
        assert!(
            k >= 1,
            "{what}: {}x{} for a {w}x{h} image",
            picture.width(),
            picture.height()
        );
        assert_eq!(
            (picture.width() as usize, picture.height() as usize),
            (w * k, h * k),
            "{what}"
        );
        for (x, y, p) in picture.enumerate_pixels() {
            let expected = (values[(y as usize / k) * w + x as usize / k] * 255.0).round() as u8;
            assert_eq!(p.0, [expected; 3], "{what}: pixel ({x}, {y})");
        }
    }
}
