//! Vertex AI's routes against Google's own client and types (`google-cloud-aiplatform` in the test
//! virtualenv, scripts/vertex_client.py): requests built with its types, answers parsed strictly
//! with them, the REST client pointed at this service by its endpoint alone; and the known answers:
//! Vertex's integrated gradients are explaind's own, the baseline and instance outputs are the
//! model's outputs at the baseline and the input, the approximation error is the completeness gap.

use base64::Engine as _;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::common::*;

const BASE: &str = "/v1/projects/p/locations/us-central1/endpoints";

/// A service on copies of the bundled breast-cancer and fashion models, plus the fashion model
/// again under its own endpoint id, its attributions drawn as Vertex's visualisation asks.
async fn service() -> explaind::Service {
    let dir = temp_dir("vertex-models");
    copy_bundled("breast-cancer", &dir);
    copy_bundled("fashion-cnn", &dir);
    let pictured = dir.join("fashion-pictured");
    std::fs::create_dir_all(&pictured).unwrap();
    std::fs::copy(dir.join("fashion-cnn/model.onnx"), pictured.join("model.onnx")).unwrap();
    let manifest = std::fs::read_to_string(dir.join("fashion-cnn/model.toml")).unwrap();
    // The reference set is not needed here; the rest of the manifest is the bundled one.
    let manifest = manifest.split("\n[reference]").next().unwrap().to_string();
    std::fs::write(
        pictured.join("model.toml"),
        format!(
            "{manifest}\n[vertex]\nendpoint = \"fashion-pictures\"\n\n[vertex.visualization]\npolarity = \"BOTH\"\n\
             color_map = \"VIRIDIS\"\nclip_percent_upperbound = 99.5\nclip_percent_lowerbound = 50\noverlay_type = \"GRAYSCALE\"\n"
        ),
    )
    .unwrap();
    start(test_config(&dir)).await
}

fn row() -> Vec<f32> {
    breast_cancer_holdout()[0].clone()
}

/// Runs the client script on `cases`; its answer per case name.
async fn client(service: &explaind::Service, cases: &Value) -> Value {
    let mut command = std::process::Command::new(test_venv("python"));
    command
        .arg(root().join("scripts/vertex_client.py"))
        .arg(url(service, ""))
        .stdin(std::process::Stdio::piped());
    let input = temp_dir("vertex-cases").join("cases.json");
    std::fs::write(&input, cases.to_string()).unwrap();
    command.stdin(std::fs::File::open(&input).unwrap());
    let out = run_ok(command, "scripts/vertex_client.py".into()).await;
    serde_json::from_str(&out).unwrap()
}

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol * (1.0 + a.abs().max(b.abs()))
}

#[tokio::test]
async fn vertex_clients_get_explaind_answers_in_vertex_shapes() {
    let service = service().await;
    let png = base64::engine::general_purpose::STANDARD.encode(fashion_png());
    let features = tabular_features(&service, "breast-cancer").await;
    let ig = json!({"integratedGradientsAttribution": {"stepCount": 32}});
    let cases = json!([
        {"name": "predict", "endpoint": "breast-cancer", "verb": "predict",
         "request": {"instances": [row(), features.iter().cloned().zip(row().into_iter().map(Value::from)).collect::<serde_json::Map<String, Value>>()]}},
        {"name": "tabular", "endpoint": "breast-cancer", "verb": "explain",
         "request": {"instances": [row()],
                     "explanationSpecOverride": {"parameters": {"topK": 2, "integratedGradientsAttribution": {"stepCount": 32}}}}},
        {"name": "image", "endpoint": "fashion-cnn", "verb": "explain",
         "request": {"instances": [{"image_bytes": {"b64": png}}],
                     "explanationSpecOverride": {"parameters": {"outputIndices": [3, 1],
                        "integratedGradientsAttribution": {"stepCount": 16}}}}},
        {"name": "smooth", "endpoint": "breast-cancer", "verb": "explain",
         "request": {"instances": [row()],
                     "explanationSpecOverride": {"parameters": {"integratedGradientsAttribution":
                        {"stepCount": 16, "smoothGradConfig": {"noiseSigma": 0.5, "noisySampleCount": 4}}}}}},
        {"name": "pictures", "endpoint": "fashion-pictures", "verb": "explain",
         "request": {"instances": [{"b64": png}], "explanationSpecOverride": {"parameters": ig}}},
        {"name": "shapley", "endpoint": "breast-cancer", "verb": "explain",
         "request": {"instances": [row()],
                     "explanationSpecOverride": {"parameters": {"sampledShapleyAttribution": {"pathCount": 10}}}}},
        {"name": "xrai", "endpoint": "fashion-cnn", "verb": "explain",
         "request": {"instances": [{"b64": png}],
                     "explanationSpecOverride": {"parameters": {"xraiAttribution":
                        {"stepCount": 8, "smoothGradConfig": {"noiseSigma": 0.1, "noisySampleCount": 2}}}}}},
        {"name": "unknown", "endpoint": "no-such-model", "verb": "predict", "request": {"instances": [row()]}},
        {"name": "steps", "endpoint": "breast-cancer", "verb": "explain",
         "request": {"instances": [row()],
                     "explanationSpecOverride": {"parameters": {"integratedGradientsAttribution": {"stepCount": 101}}}}},
    ]);
    let got = client(&service, &cases).await;

    // The client read every answer into its types, and so did the strict parse, which refuses a
    // field the types lack.
    for name in ["predict", "tabular", "image", "smooth", "pictures", "shapley", "xrai"] {
        assert!(got[name]["client"]["type"].is_string(), "{name}: {}", got[name]);
        assert!(got[name]["parsed"].is_object(), "{name}: {}", got[name]);
    }
    assert_eq!(got["strictness"]["refused"], true, "{}", got["strictness"]);

    // :predict: the model's outputs, whichever form the row came in.
    let predict = &got["predict"]["answer"];
    assert_eq!(predict["deployedModelId"], "breast-cancer");
    let native = ok_json(
        post_json(
            &service,
            "/v1/models/breast-cancer/predict",
            &json!({"features": row()}),
        )
        .await,
    )
    .await;
    assert_eq!(predict["predictions"][0], native["outputs"]["logits"]);
    assert_eq!(predict["predictions"][1], native["outputs"]["logits"]);

    // :explain on a tabular model: explaind's own integrated gradients, for the top two outputs
    // by instance output; the outputs at the input and at the (all-zero) baseline; the gap.
    let zero = ok_json(
        post_json(
            &service,
            "/v1/models/breast-cancer/predict",
            &json!({"features": vec![0.0; 30]}),
        )
        .await,
    )
    .await;
    let tabular = &got["tabular"]["answer"]["explanations"][0]["attributions"];
    assert_eq!(tabular.as_array().unwrap().len(), 2);
    let first = tabular[0]["instanceOutputValue"].as_f64().unwrap();
    assert!(
        first >= tabular[1]["instanceOutputValue"].as_f64().unwrap(),
        "topK sorts by instance output"
    );
    for a in tabular.as_array().unwrap() {
        let index = a["outputIndex"][0].as_u64().unwrap() as usize;
        let own = ok_json(
            post_json(
                &service,
                "/v1/models/breast-cancer/explain/integrated-gradients",
                &json!({"features": row(), "target": index, "params": {"steps": 32}}),
            )
            .await,
        )
        .await;
        let values = attribution_values(&own);
        for (name, v) in features.iter().zip(&values) {
            let vertex = a["featureAttributions"][name].as_f64().unwrap();
            assert_eq!(vertex as f32, *v as f32, "{name}: Vertex {vertex}, explaind {v}");
        }
        let instance = native["outputs"]["logits"][index].as_f64().unwrap();
        let baseline = zero["outputs"]["logits"][index].as_f64().unwrap();
        assert!(close(a["instanceOutputValue"].as_f64().unwrap(), instance, 1e-6), "{a}");
        assert!(
            close(a["baselineOutputValue"].as_f64().unwrap(), baseline, 1e-5),
            "{a} vs {baseline}"
        );
        let gap = own["convergence_delta"].as_f64().unwrap();
        let error = gap.abs() / (instance - baseline).abs();
        assert!(
            close(a["approximationError"].as_f64().unwrap(), error, 1e-4),
            "{a} vs {error}"
        );
        assert_eq!(a["outputName"], "logits");
        assert_eq!(a["outputDisplayName"], if index == 1 { "benign" } else { "malignant" });
    }

    // An image: the outputs asked, in their order; the attribution in the model's input space
    // under the instance's input name, explaind's own tensor.
    let image = &got["image"]["answer"]["explanations"][0]["attributions"];
    assert_eq!(image[0]["outputIndex"], json!([3]));
    assert_eq!(image[1]["outputIndex"], json!([1]));
    let own = ok_json(
        post_json(
            &service,
            "/v1/models/fashion-cnn/explain/integrated-gradients",
            &json!({"image": png, "target": 3, "params": {"steps": 16}, "include": ["tensor"]}),
        )
        .await,
    )
    .await;
    let map = &image[0]["featureAttributions"]["image_bytes"];
    assert_eq!(map.as_array().map(Vec::len), Some(1), "[channel][row][column]");
    let flat: Vec<f64> = map[0]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()))
        .collect();
    let tensor: Vec<f64> = serde_json::from_value(own["attributions"]["tensor"]["values"].clone()).unwrap();
    assert_eq!(flat.len(), 28 * 28);
    let as_f32 = |v: &[f64]| v.iter().map(|x| *x as f32).collect::<Vec<_>>();
    assert_eq!(as_f32(&flat), as_f32(&tensor));

    // SmoothGrad on the path: other values, the same outputs at the ends.
    let smooth = &got["smooth"]["answer"]["explanations"][0]["attributions"][0];
    let sum: f64 = smooth["featureAttributions"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_f64().unwrap())
        .sum();
    let spread = smooth["instanceOutputValue"].as_f64().unwrap() - smooth["baselineOutputValue"].as_f64().unwrap();
    // Noise breaks completeness (the noisy points leave the straight path): the gap is reported.
    let error = (sum - spread).abs() / spread.abs();
    assert!(
        close(smooth["approximationError"].as_f64().unwrap(), error, 1e-4),
        "{smooth} vs {error}"
    );
    assert_ne!(smooth["featureAttributions"], tabular[0]["featureAttributions"]);

    // The manifest's visualisation: a JPEG under the input's name.
    let pictured = &got["pictures"]["answer"]["explanations"][0]["attributions"][0]["featureAttributions"];
    let pictured = pictured.as_object().unwrap();
    assert_eq!(pictured.len(), 1, "one input: {pictured:?}");
    let b64 = pictured.values().next().unwrap()["b64_jpeg"].as_str().unwrap();
    let jpeg = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
    assert_eq!(&jpeg[..2], &[0xFF, 0xD8], "a JPEG");

    // Sampled Shapley explains the score predictions report (the logit model's probability): at
    // the input, and at the all-zero row (Captum's default baseline); the values sum to the
    // change (efficiency), the standard errors give the approximation error.
    let shapley = &got["shapley"]["answer"]["explanations"][0]["attributions"][0];
    let index = shapley["outputIndex"][0].as_u64().unwrap();
    let score = |answer: &Value| {
        let list = answer["predictions"].as_array().unwrap();
        list.iter().find(|p| p["index"] == index).unwrap()["score"]
            .as_f64()
            .unwrap()
    };
    let baseline = score(&zero);
    assert!(
        close(shapley["baselineOutputValue"].as_f64().unwrap(), baseline, 1e-5),
        "{shapley}"
    );
    assert!(
        close(shapley["instanceOutputValue"].as_f64().unwrap(), score(&native), 1e-5),
        "{shapley}"
    );
    let sum: f64 = shapley["featureAttributions"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_f64().unwrap())
        .sum();
    let spread = shapley["instanceOutputValue"].as_f64().unwrap() - baseline;
    assert!(close(sum, spread, 1e-4), "efficiency: {sum} vs {spread}");
    assert!(shapley["approximationError"].as_f64().unwrap() > 0.0, "{shapley}");

    // XRAI: the region map over the image, and the mean of the outputs at its black and white
    // baselines (Vertex averages several baselines' outputs).
    let xrai = &got["xrai"]["answer"]["explanations"][0]["attributions"][0];
    let index = xrai["outputIndex"][0].as_u64().unwrap() as usize;
    let plain = |v: u8| {
        let img = image::GrayImage::from_pixel(28, 28, image::Luma([v]));
        let mut png = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        base64::engine::general_purpose::STANDARD.encode(png)
    };
    let mut outputs = Vec::new();
    for v in [0u8, 255] {
        let answer =
            ok_json(post_json(&service, "/v1/models/fashion-cnn/predict", &json!({"image": plain(v)})).await).await;
        outputs.push(answer["outputs"]["logits"][index].as_f64().unwrap());
    }
    let mean = (outputs[0] + outputs[1]) / 2.0;
    assert!(
        close(xrai["baselineOutputValue"].as_f64().unwrap(), mean, 1e-5),
        "{xrai} vs {mean}"
    );
    let map = xrai["featureAttributions"]
        .as_object()
        .unwrap()
        .values()
        .next()
        .unwrap();
    assert_eq!(map.as_array().map(Vec::len), Some(28), "[row][column]");
    assert!(xrai["approximationError"].as_f64().is_some(), "{xrai}");

    // Errors as Google APIs write them, read by google-api-core, explaind's problem type kept.
    let unknown = &got["unknown"];
    assert_eq!(unknown["client_error"]["code"], 404, "{unknown}");
    assert_eq!(unknown["client_error"]["reason"], "MODEL_NOT_FOUND");
    assert_eq!(unknown["client_error"]["domain"], "explaind");
    assert_eq!(unknown["client_error"]["metadata"]["type"], "/problems/model-not-found");
    assert_eq!(unknown["error"]["error"]["status"], "NOT_FOUND");
    let steps = &got["steps"];
    assert_eq!(steps["client_error"]["code"], 400, "{steps}");
    assert_eq!(steps["error"]["error"]["status"], "INVALID_ARGUMENT");
    assert!(steps["error"]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("stepCount"));
    assert_discloses_nothing(&got.to_string());
}

/// POSTs a Vertex body and checks a Google error: status, canonical code, explaind's reason.
async fn google_error(
    service: &explaind::Service,
    path: &str,
    body: &Value,
    status: StatusCode,
    reason: &str,
) -> Value {
    let resp = post_json(service, &format!("{BASE}/{path}"), body).await;
    assert_eq!(resp.status(), status, "{path} {body}");
    assert_eq!(resp.headers()["content-type"], "application/json");
    let text = resp.text().await.unwrap();
    assert_discloses_nothing(&text);
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["error"]["code"], status.as_u16(), "{v}");
    assert_eq!(v["error"]["details"][0]["reason"], reason, "{v}");
    assert_eq!(
        v["error"]["details"][0]["@type"],
        "type.googleapis.com/google.rpc.ErrorInfo"
    );
    v
}

#[tokio::test]
async fn vertex_requests_meet_explaind_limits_and_get_google_errors() {
    let mut config = test_config(&root().join("models"));
    config.max_batch = 2;
    config.max_samples = 64;
    let service = start(config).await;
    let explain = |p: Value| json!({"instances": [row()], "explanationSpecOverride": {"parameters": p}});
    // explaind's own limits: instances per request, samples per explanation.
    let v = google_error(
        &service,
        "breast-cancer:predict",
        &json!({"instances": [row(), row(), row()]}),
        StatusCode::BAD_REQUEST,
        "INVALID_REQUEST",
    )
    .await;
    assert!(v["error"]["message"].as_str().unwrap().contains("max_batch"), "{v}");
    let v = google_error(
        &service,
        "breast-cancer:explain",
        &explain(json!({"integratedGradientsAttribution": {"stepCount": 40,
            "smoothGradConfig": {"noisySampleCount": 2}}})),
        StatusCode::UNPROCESSABLE_ENTITY,
        "INVALID_INPUT",
    )
    .await;
    assert!(v["error"]["message"].as_str().unwrap().contains("64"), "{v}");
    // Vertex's own ranges and shapes.
    for (p, text) in [
        (json!({"topK": -2}), "topK"),
        (json!({"outputIndices": ["a"]}), "outputIndices"),
        (
            json!({"integratedGradientsAttribution": {"stepCount": 1}}),
            "at least 2",
        ),
        (json!({"sampledShapleyAttribution": {"pathCount": 51}}), "pathCount"),
        (
            json!({"integratedGradientsAttribution": {}, "xraiAttribution": {}}),
            "one of",
        ),
        (json!({"examples": {}}), "similar-examples"),
        (
            json!({"integratedGradientsAttribution": {"smoothGradConfig": {"noiseSigma": 0.1, "featureNoiseSigma": {}}}}),
            "not both",
        ),
        (
            json!({"integratedGradientsAttribution": {"stepCount": "many"}}),
            "integer",
        ),
    ] {
        let v = google_error(
            &service,
            "breast-cancer:explain",
            &explain(p.clone()),
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST",
        )
        .await;
        assert!(v["error"]["message"].as_str().unwrap().contains(text), "{p}: {v}");
    }
    // A target the model lacks; a feature the model lacks.
    google_error(
        &service,
        "breast-cancer:explain",
        &explain(json!({"outputIndices": [7]})),
        StatusCode::UNPROCESSABLE_ENTITY,
        "INVALID_INPUT",
    )
    .await;
    google_error(
        &service,
        "breast-cancer:explain",
        &explain(json!({"integratedGradientsAttribution": {"smoothGradConfig": {"featureNoiseSigma": {"noiseSigma": [{"name": "/etc/passwd", "sigma": 1}]}}}})),
        StatusCode::UNPROCESSABLE_ENTITY,
        "INVALID_INPUT",
    )
    .await;
    // Unknown fields, methods, bodies; a tree model has no gradients.
    google_error(
        &service,
        "breast-cancer:predict",
        &json!({"instances": [row()], "x": 1}),
        StatusCode::BAD_REQUEST,
        "INVALID_REQUEST",
    )
    .await;
    google_error(
        &service,
        "breast-cancer:predict",
        &json!({"instances": [row()], "parameters": {"x": 1}}),
        StatusCode::BAD_REQUEST,
        "INVALID_REQUEST",
    )
    .await;
    google_error(
        &service,
        "breast-cancer:rawPredict",
        &json!({}),
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
    )
    .await;
    google_error(
        &service,
        "breast-cancer:explain",
        &json!({"instances": [row()], "deployedModelId": "other"}),
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
    )
    .await;
    google_error(
        &service,
        "breast-cancer:predict",
        &json!({"instances": [{"b64": "x"}]}),
        StatusCode::UNPROCESSABLE_ENTITY,
        "INVALID_INPUT",
    )
    .await;
    google_error(
        &service,
        "fashion-cnn:predict",
        &json!({"instances": [{"b64": "bm90IGFuIGltYWdl"}]}),
        StatusCode::BAD_REQUEST,
        "INVALID_IMAGE",
    )
    .await;
    google_error(
        &service,
        "breast-cancer-forest:explain",
        &json!({"instances": [row()]}),
        StatusCode::UNPROCESSABLE_ENTITY,
        "MODEL_NOT_DIFFERENTIABLE",
    )
    .await;
    let resp = reqwest::Client::new()
        .post(url(&service, &format!("{BASE}/breast-cancer:predict")))
        .header("content-type", "text/plain")
        .body("hi")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["status"], "INVALID_ARGUMENT");
    // Other routes keep problem+json.
    let resp = post_json(&service, "/v1/models/nope/predict", &json!({})).await;
    problem(resp, StatusCode::NOT_FOUND, "model-not-found").await;
}

#[tokio::test]
async fn integrated_gradients_smooth_grad_is_seeded_and_without_noise_is_integrated_gradients() {
    let service = start_bundled().await;
    let path = "/v1/models/breast-cancer/explain/integrated-gradients";
    let ask = |params: Value, seed: u64| json!({"features": row(), "params": params, "seed": seed});
    let plain = attribution_values(&ok_json(post_json(&service, path, &ask(json!({"steps": 16}), 1)).await).await);
    let quiet = attribution_values(
        &ok_json(
            post_json(
                &service,
                path,
                &ask(json!({"steps": 16, "smooth_grad": {"samples": 3, "sigma": 0.0}}), 1),
            )
            .await,
        )
        .await,
    );
    for (a, b) in plain.iter().zip(&quiet) {
        assert!(close(*a, *b, 1e-5), "no noise is plain IG: {a} vs {b}");
    }
    let noisy = json!({"steps": 16, "smooth_grad": {"samples": 3, "sigma": 0.5}});
    let one = attribution_values(&ok_json(post_json(&service, path, &ask(noisy.clone(), 7)).await).await);
    let again = attribution_values(&ok_json(post_json(&service, path, &ask(noisy.clone(), 7)).await).await);
    let other = attribution_values(&ok_json(post_json(&service, path, &ask(noisy, 8)).await).await);
    assert_eq!(one, again, "the same seed gives the same noise");
    assert_ne!(one, other);
    assert_ne!(one, plain);
    // One sigma per feature: as many as the model has.
    let resp = post_json(&service, path, &ask(json!({"smooth_grad": {"sigma": [0.1, 0.2]}}), 1)).await;
    problem(resp, StatusCode::UNPROCESSABLE_ENTITY, "invalid-input").await;
    let resp = post_json(&service, path, &ask(json!({"smooth_grad": {"sigma": -1.0}}), 1)).await;
    problem(resp, StatusCode::BAD_REQUEST, "invalid-request").await;
}
