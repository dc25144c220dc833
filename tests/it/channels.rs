//! Channel attribution ("which channels decide") on a network whose answer is known (class 0
//! reads one channel of its layer `features`), its layer integrated gradients' completeness on
//! the bundled Fashion-MNIST CNN, the map of any channel on request, and its refusals.

use crate::common::*;
use crate::explain::noise_png;
use base64::Engine;
use explaind::onnx::zoo::channels::{one_channel, CHANNELS, DECIDING_CHANNEL};
use reqwest::StatusCode;
use serde_json::{json, Value};

pub(crate) const ONE_CHANNEL_MANIFEST: &str =
    "task = \"image-classification\"\nlabels = [\"channel\", \"others\"]\n[image]\ncolor = \"grayscale\"\n";

pub(crate) async fn start_channels() -> explaind::Service {
    let dir = temp_dir("channel-models");
    write_model(&dir, "one-channel", &one_channel(16), ONE_CHANNEL_MANIFEST);
    copy_bundled("fashion-cnn", &dir);
    start(test_config(&dir)).await
}

fn b64(png: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(png)
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_channel_the_target_reads_ranks_first_and_the_rest_hold_nothing() {
    let s = start_channels().await;
    let image = b64(&noise_png(16, 3).0);
    for rank_by in ["integrated_gradients", "gradient_x_activation"] {
        let v = ok_json(
            post_json(
                &s,
                "/v1/models/one-channel/explain/channel-attribution",
                &json!({"image": image, "target": 0, "params": {"rank_by": rank_by, "top_k": 3}}),
            )
            .await,
        )
        .await;
        let d = &v["details"];
        assert_eq!(d["layer"], "features", "{d}");
        assert_eq!(d["channels"], CHANNELS);
        assert_eq!(d["top"][0]["channel"], DECIDING_CHANNEL, "{rank_by}: {d}");
        assert_eq!(d["shown"], DECIDING_CHANNEL);
        assert_eq!(d["top"].as_array().unwrap().len(), 3);
        assert_eq!(d["top"][0]["map"]["shape"], json!([16, 16]));
        for key in ["integrated_gradients", "gradient_x_activation"] {
            let values = floats(&d[key]);
            assert!(values[DECIDING_CHANNEL] > 0.0, "{key}: {values:?}");
            for (c, value) in values.iter().enumerate().filter(|(c, _)| *c != DECIDING_CHANNEL) {
                assert_eq!(*value, 0.0, "{key}: channel {c} holds {value}");
            }
        }
        // Completeness: the one channel's integrated gradients are the score difference.
        let difference = d["score_difference"].as_f64().unwrap();
        let total: f64 = floats(&d["integrated_gradients"]).iter().sum();
        let delta = v["convergence_delta"].as_f64().unwrap();
        assert!(
            (total - difference - delta).abs() < 1e-6,
            "{total} {difference} {delta}"
        );
        assert!(delta.abs() <= 1e-3 * difference.abs(), "delta {delta} of {difference}");
        assert_eq!(v["attributions"]["shape"], json!([16, 16]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layer_integrated_gradients_add_up_to_the_score_difference_on_the_fashion_cnn() {
    let s = start_channels().await;
    let image = b64(&fashion_png());
    let v = ok_json(
        post_json(
            &s,
            "/v1/models/fashion-cnn/explain/channel-attribution",
            &json!({"image": image, "params": {"steps": 64}}),
        )
        .await,
    )
    .await;
    let d = &v["details"];
    let difference = d["score_difference"].as_f64().unwrap();
    let total: f64 = floats(&d["integrated_gradients"]).iter().sum();
    let delta = v["convergence_delta"].as_f64().unwrap();
    assert!(
        (total - difference - delta).abs() < 1e-4,
        "{total} {difference} {delta}"
    );
    assert!(
        delta.abs() <= 0.02 * difference.abs(),
        "layer IG sums to {total}, the score difference is {difference}"
    );
    let channels = d["channels"].as_u64().unwrap() as usize;
    assert_eq!(floats(&d["gradient_x_activation"]).len(), channels);
    // The top channels come in order.
    let ig = floats(&d["integrated_gradients"]);
    let top: Vec<usize> = d["top"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["channel"].as_u64().unwrap() as usize)
        .collect();
    assert!(top.windows(2).all(|w| ig[w[0]] >= ig[w[1]]), "{top:?}");
    assert!(ig.iter().all(|v| *v <= ig[top[0]]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_channel_s_map_is_drawn_on_request() {
    let s = start_channels().await;
    let (png, _) = noise_png(16, 4);
    let http = reqwest::Client::new();
    let r = http
        .post(url(
            &s,
            "/v1/models/one-channel/explain/channel-attribution?target=0&channel=2&format=png",
        ))
        .header("content-type", "image/png")
        .body(png.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "image/png");
    let drawn = image::load_from_memory(&r.bytes().await.unwrap()).unwrap();
    assert!(drawn.width() >= 16);
    let v = ok_json(
        post_json(
            &s,
            "/v1/models/one-channel/explain/channel-attribution",
            &json!({"image": b64(&png), "target": 0, "params": {"channel": 2}}),
        )
        .await,
    )
    .await;
    assert_eq!(v["details"]["shown"], 2);
    assert_eq!(v["params"]["channel"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_layer_or_channel_is_refused_naming_what_there_is() {
    let s = start_channels().await;
    let image = b64(&noise_png(16, 5).0);
    let path = "/v1/models/one-channel/explain/channel-attribution";
    let body = problem(
        post_json(&s, path, &json!({"image": image, "params": {"layer": "no-such-layer"}})).await,
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
    for params in [json!({"steps": 1}), json!({"top_k": 65}), json!({"rank_by": "size"})] {
        problem(
            post_json(&s, path, &json!({"image": image, "params": params})).await,
            StatusCode::BAD_REQUEST,
            "invalid-request",
        )
        .await;
    }
}
