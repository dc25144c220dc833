//! Region and detection targets beyond one explanation: a segmenter's region-sum graph (and each
//! backward graph made from it) built once per model whatever the regions asked, replays of
//! region and detection explanations (and of a prediction's attached one) giving the recorded
//! bytes, predictions carrying region and detection explanations, and a detection's metrics
//! reading the similarity of each perturbed input's best match to the explained box. Zoo models
//! with known answers, a real server on loopback, its audit log in SQLite.

use crate::common;

use base64::Engine;
use common::gradcheck::{run_output, runner};
use common::*;
use explaind::config::AuditMode;
use explaind::onnx::zoo::{detector, segmenter, SegLayout};
use reqwest::StatusCode;
use serde_json::{json, Value};

const SIDE: usize = 16;
const SEG: &str = "task = \"semantic-segmentation\"\nlabels = [\"background\", \"object\"]\n\
                   [image]\ncolor = \"grayscale\"\n[segmentation]\nlayout = \"NCHW\"\n";

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The segmenter and the detector of tests/it/{segmentation,detection}.rs, every answer recorded
/// with its input and map.
async fn start_audited() -> explaind::Service {
    let dir = temp_dir("region-targets-models");
    write_model(&dir, "seg", &segmenter(SIDE as i64, 2, SegLayout::Nchw, 3), SEG);
    write_model(&dir, "detector", &detector(2), crate::detection::MANIFEST);
    let mut c = test_config(&dir);
    c.data_dir = temp_dir("region-targets-data");
    c.audit = AuditMode::All;
    c.audit_store_inputs = true;
    c.audit_store_maps = true;
    start(c).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segmenter_s_region_graphs_are_built_once_whatever_the_regions() {
    let s = start_audited().await;
    let (png, _) = crate::explain::noise_png(SIDE as u32, 1);
    let image = b64(&png);
    let mut built = Vec::new();
    let mut timings = Vec::new();
    for (method, region) in [
        ("saliency", json!({"box": [4, 4, 8, 8]})),
        ("saliency", json!({"polygon": [[0, 0], [12, 0], [0, 12]]})),
        ("saliency", Value::Null),
        ("lrp", json!({"box": [4, 4, 8, 8]})),
        ("lrp", json!({"box": [2, 6, 14, 9]})),
        ("deeplift", json!({"box": [4, 4, 8, 8]})),
        ("deeplift", Value::Null),
    ] {
        let mut body = json!({"image": image, "target": "object"});
        if !region.is_null() {
            body["region"] = region;
        }
        let started = std::time::Instant::now();
        let v = ok_json(post_json(&s, &format!("/v1/models/seg/explain/{method}"), &body).await).await;
        timings.push(format!("{method} {:.0} ms", started.elapsed().as_secs_f64() * 1e3));
        assert!(attribution_values(&v).iter().all(|x| x.is_finite()), "{method}: {v}");
        built.push(s.state.gradients.built_count());
    }
    eprintln!("region explanations, one after another: {timings:?}; backward graphs built {built:?}");
    // One backward graph per rule set: the second and later regions only feed their masks.
    assert_eq!(built[1], built[0], "{built:?}");
    assert_eq!(built[2], built[0], "{built:?}");
    assert_eq!(built[4], built[3], "{built:?}");
    assert_eq!(built[6], built[5], "{built:?}");
    s.stop().await.unwrap();
}

/// Replays record `id` and checks it gives the recorded bytes.
async fn replays_bitwise(s: &explaind::Service, what: &str, answer: &Value) {
    let id = answer["audit_record"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: {answer}"));
    let r = ok_json(post_json(s, &format!("/v1/audit/records/{id}/replay"), &json!({})).await).await;
    assert_eq!(r["equal"], true, "{what}: {r}");
    assert_eq!(r["agreement"], "bitwise", "{what}: {r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_of_region_and_detection_targets_give_the_recorded_bytes() {
    let s = start_audited().await;
    let (png, _) = crate::explain::noise_png(SIDE as u32, 1);
    let seg_image = b64(&png);
    let det_image = b64(&crate::detection::cell_png());
    let cases = [
        (
            "seg",
            "saliency",
            json!({"image": seg_image, "target": "object", "region": {"box": [4, 4, 8, 8]}}),
        ),
        (
            "seg",
            "integrated-gradients",
            json!({"image": seg_image, "target": "object", "region": {"polygon": [[0, 0], [12, 0], [0, 12]]},
                   "params": {"steps": 8}}),
        ),
        ("seg", "occlusion", json!({"image": seg_image, "target": "object"})),
        (
            "detector",
            "saliency",
            json!({"image": det_image, "target": {"detection": 0}}),
        ),
        (
            "detector",
            "rise",
            json!({"image": det_image, "target": {"box": [1, 17, 15, 30], "label": "bright"}, "seed": 4,
                   "params": {"masks": 64}}),
        ),
        ("detector", "lrp", json!({"image": det_image, "target": {"top_k": 1}})),
    ];
    for (model, method, body) in cases {
        let answer = ok_json(post_json(&s, &format!("/v1/models/{model}/explain/{method}"), &body).await).await;
        replays_bitwise(&s, &format!("{model}/{method}"), &answer).await;
    }
    // A region explanation that differs from the default region's: the replay ran the recorded
    // region, not each class's predicted pixels.
    let boxed = ok_json(
        post_json(
            &s,
            "/v1/models/seg/explain/saliency",
            &json!({"image": seg_image, "target": "object", "region": {"box": [4, 4, 8, 8]}}),
        )
        .await,
    )
    .await;
    let default = ok_json(
        post_json(
            &s,
            "/v1/models/seg/explain/saliency",
            &json!({"image": seg_image, "target": "object"}),
        )
        .await,
    )
    .await;
    assert_ne!(boxed["attributions"]["values"], default["attributions"]["values"]);
    // A prediction's attached region and detection explanations replay too.
    for (model, image, explain) in [
        (
            "seg",
            &seg_image,
            json!({"method": "saliency", "target": "object", "region": {"box": [4, 4, 8, 8]}}),
        ),
        (
            "detector",
            &det_image,
            json!({"method": "saliency", "target": {"box": [1, 17, 15, 30], "label": "bright"}}),
        ),
    ] {
        let answer = ok_json(
            post_json(
                &s,
                &format!("/v1/models/{model}/predict"),
                &json!({"image": image, "explain": explain}),
            )
            .await,
        )
        .await;
        replays_bitwise(&s, &format!("{model} predict"), &answer).await;
    }
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn predictions_carry_region_and_detection_explanations() {
    let s = start_audited().await;
    let (png, _) = crate::explain::noise_png(SIDE as u32, 1);
    let image = b64(&png);
    // A segmenter: the attached explanation is the explain route's, on the same region.
    let region = json!({"box": [4.0, 4.0, 8.0, 8.0]});
    let explained = ok_json(
        post_json(
            &s,
            "/v1/models/seg/explain/saliency",
            &json!({"image": image, "target": "object", "region": region}),
        )
        .await,
    )
    .await;
    let predicted = ok_json(
        post_json(
            &s,
            "/v1/models/seg/predict",
            &json!({"image": image, "explain": {"method": "saliency", "target": "object", "region": region}}),
        )
        .await,
    )
    .await;
    let attached = &predicted["explanation"];
    assert_eq!(attached["region"], region, "{predicted}");
    assert_eq!(attached["target"], explained["target"], "{predicted}");
    assert_eq!(attached["attributions"], explained["attributions"]);
    // A detector, on a letterboxed 64 x 32 image: the box target is in the image's pixels.
    let wide = image::RgbImage::from_fn(64, 32, |x, y| {
        let v = if x < 32 && y >= 16 { 200 } else { 0 };
        image::Rgb([v, v, v])
    });
    let mut wide_png = Vec::new();
    wide.write_to(&mut std::io::Cursor::new(&mut wide_png), image::ImageFormat::Png)
        .unwrap();
    let wide = b64(&wide_png);
    let target = json!({"box": [0, 16, 32, 32], "label": "bright"});
    let explained = ok_json(
        post_json(
            &s,
            "/v1/models/detector/explain/saliency",
            &json!({"image": wide, "target": target}),
        )
        .await,
    )
    .await;
    let predicted = ok_json(
        post_json(
            &s,
            "/v1/models/detector/predict",
            &json!({"image": wide, "explain": {"method": "saliency", "target": target}}),
        )
        .await,
    )
    .await;
    let attached = &predicted["explanation"];
    assert_eq!(
        attached["detection"]["box"], predicted["detections"][0]["box"],
        "{predicted}"
    );
    assert_eq!(attached["detection"], explained["detection"], "{predicted}");
    assert_eq!(attached["attributions"], explained["attributions"]);
    // A box reaching outside the image is refused, as on the explain route.
    let r = post_json(
        &s,
        "/v1/models/detector/predict",
        &json!({"image": wide, "explain": {"method": "saliency", "target": {"box": [0, 16, 80, 32]}}}),
    )
    .await;
    let body = problem(r, StatusCode::BAD_REQUEST, "invalid-request").await;
    assert!(body["detail"].as_str().unwrap().contains("outside the image"), "{body}");
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_detection_s_metrics_read_its_best_match_s_similarity() {
    let s = start_audited().await;
    let image = b64(&crate::detection::cell_png());
    let v = ok_json(
        post_json(
            &s,
            "/v1/models/detector/explain/occlusion",
            &json!({"image": image, "target": {"detection": 0}, "evaluate": ["deletion", "insertion", "mu_fidelity"]}),
        )
        .await,
    )
    .await;
    let metric = |name: &str| {
        v["evaluation"]
            .as_array()
            .unwrap_or_else(|| panic!("{v}"))
            .iter()
            .find(|m| m["metric"] == name)
            .unwrap_or_else(|| panic!("no {name}: {v}"))
            .clone()
    };
    let curve = |name: &str| -> Vec<f64> {
        metric(name)["curve"]
            .as_array()
            .unwrap_or_else(|| panic!("{name}: {v}"))
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect()
    };
    // The whole input: the best match is the detection itself (IoU 1, the same class
    // probabilities, no objectness): similarity 1. Everything deleted (black): nothing is
    // detected, similarity 0. Insertion ends on the whole input.
    let deletion = curve("deletion");
    assert!((deletion[0] - 1.0).abs() < 1e-6, "deletion {deletion:?}");
    assert_eq!(*deletion.last().unwrap(), 0.0, "deletion {deletion:?}");
    let insertion = curve("insertion");
    assert!(
        (insertion.last().unwrap() - 1.0).abs() < 1e-6,
        "insertion {insertion:?}"
    );
    // Occlusion's map lies on the cell, whose deletion loses the detection within the first
    // steps: the curve falls to 0 long before the end (the cell is a quarter of the image).
    let gone = deletion.iter().position(|x| *x == 0.0).unwrap();
    assert!(gone * 2 < deletion.len(), "deletion {deletion:?}");
    assert!(metric("mu_fidelity").get("value").is_some(), "{v}");
    s.stop().await.unwrap();
}

/// Per pixel, the softmax of two classes' logits in each sample (NCHW rows), and the figures a
/// classifier's samples get, averaged over the pixels `keep` keeps: (predictive entropy, expected
/// entropy, mutual information).
fn per_pixel_figures(samples: &[Vec<f32>], pixels: usize, keep: impl Fn(usize) -> bool) -> (f64, f64, f64) {
    let entropy = |p: &[f64]| -p.iter().filter(|v| **v > 0.0).map(|v| v * v.ln()).sum::<f64>();
    let (mut predictive, mut expected) = (0.0, 0.0);
    let kept = (0..pixels).filter(|&p| keep(p)).count();
    for p in (0..pixels).filter(|&p| keep(p)) {
        let probs: Vec<[f64; 2]> = samples
            .iter()
            .map(|y| {
                let (a, b) = (f64::from(y[p]), f64::from(y[pixels + p]));
                let top = a.max(b);
                let (ea, eb) = ((a - top).exp(), (b - top).exp());
                [ea / (ea + eb), eb / (ea + eb)]
            })
            .collect();
        let n = probs.len() as f64;
        let mean = [
            probs.iter().map(|q| q[0]).sum::<f64>() / n,
            probs.iter().map(|q| q[1]).sum::<f64>() / n,
        ];
        predictive += entropy(&mean);
        expected += probs.iter().map(|q| entropy(q)).sum::<f64>() / n;
    }
    let m = kept as f64;
    (predictive / m, expected / m, (predictive - expected) / m)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segmenter_s_uncertainty_is_measured_pixel_by_pixel() {
    let dir = temp_dir("region-targets-uncertainty");
    let model = segmenter(SIDE as i64, 2, SegLayout::Nchw, 3);
    write_model(&dir, "seg", &model, &format!("ensemble = [\"seg-copy\"]\n{SEG}"));
    write_model(&dir, "seg-copy", &model, SEG);
    let s = start(test_config(&dir)).await;
    let (png, img) = crate::explain::noise_png(SIDE as u32, 1);
    let x: Vec<f32> = img.pixels().map(|p| f32::from(p.0[0]) / 255.0).collect();
    let mirrored: Vec<f32> = (0..SIDE * SIDE)
        .map(|i| x[(i / SIDE) * SIDE + SIDE - 1 - i % SIDE])
        .collect();
    let mut session = runner().session(&model).unwrap();
    let dims = vec![1, 1, SIDE, SIDE];
    let (_, y) = run_output(&mut session, &[("image", dims.clone(), x)], "logits");
    let (_, y_mirrored) = run_output(&mut session, &[("image", dims, mirrored)], "logits");
    // The mirrored view's logits mirrored back onto the image's pixels.
    let undone: Vec<f32> = (0..y.len())
        .map(|i| {
            let (c, p) = (i / (SIDE * SIDE), i % (SIDE * SIDE));
            y_mirrored[c * SIDE * SIDE + (p / SIDE) * SIDE + SIDE - 1 - p % SIDE]
        })
        .collect();
    let pixels = SIDE * SIDE;
    for (method, samples) in [
        ("tta", vec![y.clone(), undone]),
        // The model and its copy: the same samples, no disagreement at any pixel.
        ("ensemble", vec![y.clone(), y.clone()]),
    ] {
        let v = ok_json(
            post_json(
                &s,
                "/v1/models/seg/uncertainty",
                &json!({"image": b64(&png), "method": method}),
            )
            .await,
        )
        .await;
        let u = &v["uncertainty"];
        let (predictive, expected, mutual) = per_pixel_figures(&samples, pixels, |_| true);
        for (field, want) in [
            ("predictive_entropy", predictive),
            ("expected_entropy", expected),
            ("mutual_information", mutual),
        ] {
            let got = u[field].as_f64().unwrap_or_else(|| panic!("{method}: {v}"));
            assert!((got - want).abs() < 1e-5, "{method} {field}: {got}, expected {want}");
        }
        if method == "ensemble" {
            assert_eq!(u["mutual_information"], 0.0, "{v}");
            assert_eq!(u["variation_ratio"], 0.0, "{v}");
        } else {
            assert!(mutual > 1e-4, "the mirrored view disagrees somewhere: {mutual}");
        }
        // The classes rank by their mean share of the image's pixels.
        let shares = u["mean"].as_array().unwrap();
        let total: f64 = shares.iter().map(|x| x.as_f64().unwrap()).sum();
        assert!((total - 1.0).abs() < 1e-5, "{v}");
        assert_eq!(u["predictions"].as_array().unwrap().len(), 2, "{v}");
        // A region (the image's left half): the same figures over its pixels only.
        let left = json!({"box": [0.0, 0.0, SIDE as f64 / 2.0, SIDE as f64]});
        let v = ok_json(
            post_json(
                &s,
                "/v1/models/seg/uncertainty",
                &json!({"image": b64(&png), "method": method, "region": left}),
            )
            .await,
        )
        .await;
        let r = &v["uncertainty"]["region"];
        assert_eq!(r["pixels"], pixels / 2, "{v}");
        let (predictive, expected, mutual) = per_pixel_figures(&samples, pixels, |p| p % SIDE < SIDE / 2);
        for (field, want) in [
            ("predictive_entropy", predictive),
            ("expected_entropy", expected),
            ("mutual_information", mutual),
        ] {
            let got = r[field].as_f64().unwrap_or_else(|| panic!("{method}: {v}"));
            assert!(
                (got - want).abs() < 1e-5,
                "{method} region {field}: {got}, expected {want}"
            );
        }
        let shares: f64 = r["mean"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).sum();
        assert!((shares - 1.0).abs() < 1e-5, "{v}");
        assert_eq!(v["uncertainty"]["mean"], u["mean"], "the image's figures stay: {v}");
        // The same, attached to a prediction.
        let attached = ok_json(
            post_json(
                &s,
                "/v1/models/seg/predict",
                &json!({"image": b64(&png), "uncertainty": {"method": method, "region": left}}),
            )
            .await,
        )
        .await;
        assert_eq!(attached["uncertainty"]["region"], *r, "{attached}");
    }
    // A region outside the image is refused, naming it.
    let r = post_json(
        &s,
        "/v1/models/seg/uncertainty",
        &json!({"image": b64(&png), "method": "tta", "region": {"box": [0.0, 0.0, 999.0, 4.0]}}),
    )
    .await;
    let p = problem(r, StatusCode::UNPROCESSABLE_ENTITY, "invalid-input").await;
    assert!(p["detail"].as_str().unwrap().contains("region"), "{p}");
    // MC dropout masks the segmenter too, where the request says (it has no Dropout, and no
    // linear layer to put a mask before by default): its features.
    let features = model
        .graph
        .as_ref()
        .unwrap()
        .node
        .iter()
        .find(|n| n.op_type.as_deref() == Some("Relu"))
        .unwrap()
        .output[0]
        .clone();
    let r = post_json(
        &s,
        "/v1/models/seg/uncertainty",
        &json!({"image": b64(&png), "method": "mc-dropout", "seed": 1,
                "params": {"samples": 4, "dropout_layers": [features]}}),
    )
    .await;
    let status = r.status();
    let v: Value = r.json().await.unwrap();
    eprintln!("segmenter mc-dropout: {status} {v}");
    assert_eq!(status, StatusCode::OK, "{v}");
    assert!(v["uncertainty"]["mutual_information"].as_f64().unwrap() > 0.0, "{v}");
    s.stop().await.unwrap();
}
