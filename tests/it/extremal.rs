//! Extremal perturbations on a real server: on a model that reads fine detail in one region, the
//! masks keep that region and the scores they keep rise with their area above the fully blurred
//! image's; bad parameters are refused naming their bound; as an asynchronous job it reports
//! progress.

use crate::common;

use std::time::Duration;

use base64::Engine;
use common::*;
use explaind::onnx::builder::{Attr, GraphBuilder};
use reqwest::StatusCode;
use serde_json::{json, Value};

const SIDE: usize = 32;
/// The region whose detail the model measures.
const REGION: std::ops::Range<usize> = 10..18;

/// logits[0] = mean over REGION of |Laplacian(x)| (as ReLU(L x) + ReLU(-L x)), logits[1] its
/// negative: blurring the region lowers the score, blurring elsewhere does nothing.
fn detail_model() -> explaind::onnx::proto::ModelProto {
    let mut g = GraphBuilder::new("detail", 17);
    let x = g.input("input", &[-1, 1, SIDE as i64, SIDE as i64]);
    let laplacian = [0.0, -1.0, 0.0, -1.0, 4.0, -1.0, 0.0, -1.0, 0.0];
    let w: Vec<f32> = laplacian
        .iter()
        .chain(laplacian.iter().map(|v| -v).collect::<Vec<_>>().iter())
        .copied()
        .collect();
    let w = g.constant("w", &[2, 1, 3, 3], &w);
    let conv = g.node("Conv", &[&x, &w], vec![("pads", Attr::Ints(vec![1; 4]))]);
    let relu = g.node("Relu", &[&conv], vec![]);
    let mut mask = vec![0f32; SIDE * SIDE];
    for y in REGION {
        for x in REGION {
            mask[y * SIDE + x] = 1.0;
        }
    }
    let mask = g.constant("mask", &[1, 1, SIDE as i64, SIDE as i64], &mask);
    let kept = g.node("Mul", &[&relu, &mask], vec![]);
    let gap = g.node("GlobalAveragePool", &[&kept], vec![]);
    let flat = g.node("Flatten", &[&gap], vec![("axis", Attr::Int(1))]);
    let fc = g.constant("fc", &[2, 2], &[40.0, -40.0, 40.0, -40.0]);
    g.node("Gemm", &[&flat, &fc], vec![]);
    g.rename_last_output("logits");
    g.output("logits", &[-1, 2]);
    g.build()
}

async fn start_model() -> explaind::Service {
    let dir = temp_dir("extremal-models");
    write_model(
        &dir,
        "detail",
        &detail_model(),
        "task = \"image-classification\"\nlabels = [\"detail\", \"flat\"]\n[image]\ncolor = \"grayscale\"\n",
    );
    start(test_config(&dir)).await
}

fn noise_image() -> String {
    let mut rng = Rng::new(9);
    let pixels: Vec<u8> = (0..SIDE * SIDE).map(|_| rng.uniform(0.0, 255.0) as u8).collect();
    let img = image::GrayImage::from_raw(SIDE as u32, SIDE as u32, pixels).unwrap();
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    base64::engine::general_purpose::STANDARD.encode(out.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_masks_keep_the_region_the_model_reads() {
    let s = start_model().await;
    let v = ok_json(
        post_json(
            &s,
            "/v1/models/detail/explain/extremal-perturbation",
            // No jitter: this model is not mirror-symmetric (jitter assumes models treat a flipped
            // image alike, as ImageNet classifiers roughly do). A stronger blur than the default
            // for 32 pixels (2.9): near the input the blur levels differ little, so the score's
            // pull is weak against the area penalty's while the masks are still near 1.
            &json!({"image": noise_image(), "target": 0, "params": {"jitter": false, "max_blur": 6.0}}),
        )
        .await,
    )
    .await;
    let map = attribution_values(&v);
    assert_eq!(map.len(), SIDE * SIDE);
    let inside = |i: usize| REGION.contains(&(i / SIDE)) && REGION.contains(&(i % SIDE));
    let d = &v["details"];
    // The smallest mask sits on the pixels the region's outputs read (the region and a pixel
    // around it); larger ones add area elsewhere, where it costs the score nothing.
    let smallest: Vec<f64> = d["areas"][0]["mask"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    let reach = |i: usize| (9..19).contains(&(i / SIDE)) && (9..19).contains(&(i % SIDE));
    let hottest = (0..smallest.len())
        .max_by(|a, b| smallest[*a].total_cmp(&smallest[*b]))
        .unwrap();
    assert!(reach(hottest), "hottest pixel {hottest}");
    let share = (0..smallest.len())
        .filter(|i| reach(*i))
        .map(|i| smallest[i])
        .sum::<f64>()
        / smallest.iter().sum::<f64>();
    assert!(share > 0.4, "only {share} of the smallest mask lies on the region");
    let mean = |f: &dyn Fn(usize) -> bool| {
        let v: Vec<f64> = (0..map.len()).filter(|i| f(*i)).map(|i| map[i]).collect();
        v.iter().sum::<f64>() / v.len() as f64
    };
    let (mean_in, mean_out) = (mean(&inside), mean(&|i| !inside(i)));
    assert!(mean_in > 2.0 * mean_out, "region {mean_in} vs elsewhere {mean_out}");
    let full = d["score"].as_f64().unwrap();
    let blurred = d["blurred_score"].as_f64().unwrap();
    assert!(
        blurred < 0.5 * full,
        "blur should erase the detail: {blurred} vs {full}"
    );
    let areas = d["areas"].as_array().unwrap();
    assert_eq!(areas.len(), 3);
    let kept: Vec<f64> = areas.iter().map(|a| a["score"].as_f64().unwrap()).collect();
    for (a, k) in areas.iter().zip(&kept) {
        assert_eq!(a["mask"].as_array().unwrap().len(), SIDE * SIDE);
        assert!(*k > blurred, "area {}: kept {k}, blurred {blurred}", a["area"]);
    }
    // The largest area holds the whole region: most of the score survives.
    assert!(kept[2] > 0.6 * full, "{kept:?} of {full}");
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_parameters_name_their_bounds_and_the_job_reports_progress() {
    let s = start_model().await;
    let image = noise_image();
    assert_params_refused(
        &s,
        "/v1/models/detail/explain/extremal-perturbation",
        &json!({"image": image}),
        &[
            (json!({"areas": []}), "areas"),
            (json!({"areas": [0.0]}), "areas"),
            (json!({"areas": [0.1, 1.0]}), "areas"),
            (json!({"areas": vec![0.1; 9]}), "areas"),
            (json!({"iterations": 0}), "iterations"),
            (json!({"iterations": 100000}), "iterations"),
            (json!({"levels": 1}), "levels"),
            (json!({"sigma": 100.0}), "sigma"),
            (json!({"step": 0}), "step"),
            (json!({"max_blur": -1.0}), "max_blur"),
        ],
    )
    .await;
    let http = reqwest::Client::new();
    let r = http
        .post(url(&s, "/v1/jobs"))
        .json(
            &json!({"model": "detail", "method": "extremal-perturbation", "image": image,
                      "params": {"iterations": 60, "areas": [0.1]}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let id = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    let done = job_done(&s, &format!("/v1/jobs/{id}"), Duration::from_secs(120)).await;
    // The pass that chooses the target, one row per area and iteration, then the kept scores and
    // the blurred image.
    assert_eq!(done["progress"]["planned"], 63, "{}", done["progress"]);
    assert_eq!(done["progress"]["done"], 63, "{}", done["progress"]);
    assert_eq!(done["result"]["details"]["areas"].as_array().unwrap().len(), 1);
    s.stop().await.unwrap();
}
