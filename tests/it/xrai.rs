//! `xrai` on the known-region model (tests/it/explain.rs: a classifier that reads only one square
//! of the image): the best region lies in that square and so do the map's top pixels; the map sums
//! as the attribution does; the answer is the same bytes twice; tabular models and bad parameters
//! are refused up front, naming why. A real server on loopback.

use crate::common;
use crate::explain::{noise_png, region_model, REACH, REGION_MANIFEST, SIDE};

use base64::Engine;
use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

async fn start_region() -> explaind::Service {
    let dir = temp_dir("xrai-models");
    write_model(&dir, "region", &region_model(), REGION_MANIFEST);
    common::copy_bundled("breast-cancer", &dir);
    start(test_config(&dir)).await
}

fn inside(p: usize) -> bool {
    REACH.contains(&(p / SIDE)) && REACH.contains(&(p % SIDE))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xrai_ranks_the_region_the_model_reads_first() {
    let s = start_region().await;
    let path = "/v1/models/region/explain/xrai";
    for seed in [1u64, 2, 3] {
        let (png, _) = noise_png(SIDE as u32, seed);
        let b64 = base64::engine::general_purpose::STANDARD.encode(&png);
        let body = json!({"image": b64, "target": "region"});
        let v = ok_json(post_json(&s, path, &body).await).await;
        let d = &v["details"];
        let map = attribution_values(&v);
        let ranks: Vec<usize> = d["region_map"]["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_u64().unwrap() as usize)
            .collect();
        // The best region's pixels all lie where the model reads (pixels outside get no gradient).
        let best: Vec<usize> = (0..SIDE * SIDE).filter(|p| ranks[*p] == 1).collect();
        assert!(!best.is_empty());
        assert!(best.iter().all(|p| inside(*p)), "seed {seed}: best region {best:?}");
        assert_eq!(d["regions"][0]["rank"], 1);
        assert_eq!(d["regions"][0]["pixels"].as_u64().unwrap() as usize, best.len());
        // The map's top pixels (the best region's gain) are in the region too.
        let top = map.iter().cloned().fold(f64::MIN, f64::max);
        assert!((top - d["regions"][0]["gain"].as_f64().unwrap()).abs() < 1e-6);
        assert!((0..SIDE * SIDE).filter(|p| map[*p] >= top).all(inside));
        // Regions are ranked by gain and cover every pixel once.
        let regions = d["regions"].as_array().unwrap();
        let gains: Vec<f64> = regions.iter().map(|r| r["gain"].as_f64().unwrap()).collect();
        let ranked = &gains[..gains.len() - usize::from(regions.last().unwrap()["scale"].is_null())];
        assert!(ranked.windows(2).all(|w| w[0] >= w[1]), "{gains:?}");
        let covered: u64 = regions.iter().map(|r| r["pixels"].as_u64().unwrap()).sum();
        assert_eq!(covered as usize, SIDE * SIDE);
        assert!(ranks.iter().all(|r| (1..=regions.len()).contains(r)));
        // Each region's value times its pixels is its attribution: the map sums as IG's does.
        for r in regions {
            let (g, n, a) = (
                r["gain"].as_f64().unwrap(),
                r["pixels"].as_f64().unwrap(),
                r["attribution"].as_f64().unwrap(),
            );
            assert!((g * n - a).abs() <= 1e-6 * (1.0 + a.abs()), "{r}");
        }
        // Integrated Gradients converged from both baselines (Gauss-Legendre, 100 points).
        let f = v["target"]["score"].as_f64().unwrap().abs().max(1.0);
        for b in ["black", "white"] {
            let delta = d["ig_convergence_deltas"][b].as_f64().unwrap();
            assert!(delta.abs() < 1e-2 * f, "{b}: delta {delta}");
        }
        // 16 x 16: no dilation, one pixel added at least; scales clamp at a quarter of the pixels.
        assert_eq!(v["params"]["dilation"], 0);
        assert_eq!(v["params"]["min_pixel_diff"], 1);
        assert!(d["segmentations"].as_array().unwrap().len() >= 4, "{d}");
        // Two baselines x 100 points, their two forward passes, and the input's.
        assert_eq!(v["stats"]["model_rows"], 203, "{}", v["stats"]);
        // Deterministic: the same request gives the same answer.
        if seed == 1 {
            let again = ok_json(post_json(&s, path, &body).await).await;
            assert_eq!(again["attributions"], v["attributions"]);
            // But the worker's time, which differs from run to run (as `stats` does).
            let timeless = |v: &Value| {
                let mut d = v["details"].clone();
                d["cost"].as_object_mut().unwrap().remove("worker_ms");
                d
            };
            assert_eq!(timeless(&again), timeless(&v));
        }
    }
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xrai_refuses_tabular_models_and_bad_parameters() {
    let s = start_region().await;
    let r = post_json(
        &s,
        "/v1/models/breast-cancer/explain/xrai",
        &json!({"features": vec![0.0; 30]}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let p: Value = r.json().await.unwrap();
    assert!(
        p["detail"].as_str().unwrap().contains("xrai explains image models"),
        "{p}"
    );
    let (png, _) = noise_png(SIDE as u32, 1);
    let body = json!({"image": base64::engine::general_purpose::STANDARD.encode(&png)});
    common::assert_params_refused(
        &s,
        "/v1/models/region/explain/xrai",
        &body,
        &[
            (json!({"steps": 1}), "steps"),
            (json!({"segments": []}), "segments"),
            (json!({"segments": [1]}), "segments"),
            (json!({"segments": [501]}), "segments"),
            (json!({"segments": [8, 8, 8, 8, 8, 8, 8, 8, 8]}), "segments"),
            (json!({"compactness": 0}), "compactness"),
            (json!({"dilation": 65}), "dilation"),
            (json!({"min_pixel_diff": 0}), "min_pixel_diff"),
            (json!({"min_pixel_diff": SIDE * SIDE + 1}), "min_pixel_diff"),
            (json!({"area_threshold": 0.0}), "area_threshold"),
            (json!({"area_threshold": 1.5}), "area_threshold"),
            (json!({"internal_batch_size": 0}), "internal_batch_size"),
            (json!({"baseline": "black"}), "baseline"),
        ],
    )
    .await;
    s.stop().await.unwrap();
}

/// Both new methods as every method serves: listed on the model's report with their parameters'
/// schema, side by side in `compare` with a metric, and as an asynchronous job whose progress
/// counts the planned rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xrai_and_sampled_shapley_serve_through_the_report_compare_and_jobs() {
    let s = start_region().await;
    let report = get_json(&s, "/v1/models/region").await;
    let listed: Vec<&str> = report["methods"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        listed.contains(&"xrai") && listed.contains(&"sampled-shapley"),
        "{listed:?}"
    );
    let tabular = get_json(&s, "/v1/models/breast-cancer").await;
    let listed = tabular["methods"].to_string();
    assert!(
        listed.contains("sampled-shapley") && !listed.contains("xrai"),
        "{listed}"
    );
    let (png, _) = noise_png(SIDE as u32, 4);
    let image = base64::engine::general_purpose::STANDARD.encode(&png);
    let body = json!({"image": image, "seed": 2, "target": "region", "methods": [
        {"method": "xrai", "params": {"steps": 16}},
        {"method": "sampled-shapley", "params": {"segments": 9, "permutations": 4}}],
        "evaluate": [{"metric": "deletion", "steps": 4}]});
    let v = ok_json(post_json(&s, "/v1/models/region/compare", &body).await).await;
    let list = v["comparisons"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    for (c, name) in list.iter().zip(["xrai", "sampled-shapley"]) {
        assert_eq!(c["method"], name, "{c}");
        assert_eq!(c["evaluation"][0]["metric"], "deletion", "{c}");
    }
    let r = post_json(
        &s,
        "/v1/jobs",
        &json!({"model": "region", "method": "xrai", "image": image, "target": 0, "params": {"steps": 10}}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let id = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    let done = job_done(&s, &format!("/v1/jobs/{id}"), std::time::Duration::from_secs(60)).await;
    // The input's scores, two baselines x 10 points, the baselines' scores.
    assert_eq!(done["progress"]["planned"], 23, "{}", done["progress"]);
    assert_eq!(done["progress"]["done"], 23, "{}", done["progress"]);
    assert_eq!(done["result"]["details"]["regions"][0]["rank"], 1);
    s.stop().await.unwrap();
}
